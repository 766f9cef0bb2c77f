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


def _multirun(mode) -> bool:
    return str(mode).upper().endswith("MULTIRUN")


def wandb_group(mode, sweep_dir) -> str:
    """One wandb group per sweep (named by its folder); single runs share the group ``runs``."""
    return f"sweep {sweep_dir}" if _multirun(mode) and sweep_dir else "runs"


def wandb_name(mode, override_dirname, job_num, run_dir) -> str | None:
    """A sweep job's run is named like its folder; a single run by its output folder."""
    if _multirun(mode):
        return job_dirname(override_dirname or "", job_num if job_num is not None else 0)
    return str(run_dir) if run_dir else None


def register() -> None:
    for name, fn in (("opom_job_dirname", job_dirname), ("opom_wandb_group", wandb_group),
                     ("opom_wandb_name", wandb_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
