"""A content-addressed on-disk cache of tensors (safetensors: no pickle), written atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def config_key(config: dict) -> str:
    """A short stable hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached(cache_dir: str | Path, kind: str, config: dict, build: Callable[[], dict[str, torch.Tensor]],
           log: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Load ``<cache_dir>/<kind>/<hash(config)>.safetensors`` or build, save and return it."""
    path = Path(cache_dir).expanduser() / kind / f"{config_key(config)}.safetensors"
    if path.exists():
        return load_file(path)
    (log or logging.getLogger("opom").info)(f"building {kind} cache entry {path.name} (one time) ...")
    tensors = build()
    atomic_save(tensors, path, metadata={"config": json.dumps(config, sort_keys=True, default=str)})
    return tensors
