"""OmegaConf resolvers used by the configs; ``register()`` runs before Hydra composes (see run.py)."""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

MAX_DIRNAME = 100


def job_dirname(override_dirname: str, job_num: int | str) -> str:
    """A sweep job's folder name: its overrides when short (``method=convex_hull``), else ``job<N>-<hash>``."""
    if override_dirname and len(override_dirname) <= MAX_DIRNAME and "/" not in override_dirname:
        return override_dirname
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:8]
    return f"job{job_num}-{digest}"


def register() -> None:
    if not OmegaConf.has_resolver("opom_job_dirname"):
        OmegaConf.register_new_resolver("opom_job_dirname", job_dirname)
