"""Gallery embeddings on disk: computed once per (model, gallery), then streamed in chunks.

A million 512-d float32 embeddings are 2 GB; they live in a ``.npy`` file (written chunk by chunk through a
memory map, renamed into place when complete) and are read back chunk by chunk, so memory stays bounded by
the chunk size whatever the gallery size. With a cache folder and a model key the file is kept under
``<cache>/embeddings/`` and reused by every later evaluation of the same model on the same gallery; without
one it is a temporary file removed afterwards.

Reuse is checked, not trusted: the first images are embedded again and compared with the stored rows, so a
cache key that missed a change (new weights at the same path, say) recomputes instead of giving wrong numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from opom.data.gallery import Gallery

log = logging.getLogger("opom")
STORE_VERSION = 1
CHECK_ROWS = 8


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Embeddings (B, D) float32 of uint8 images (B, 3, H, W), in batches."""
    device = next(model.parameters(), torch.empty(0)).device
    out = [model(images[i:i + batch_size].to(device).float() / 255.0).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


class GalleryEmbeddings:
    """Read access to a finished embedding file: ``len()``, ``dim`` and ``chunks(size)`` of float32 (b, D).

    Rows are read with plain file reads, not a memory map, so a pass over a 2 GB file does not leave 2 GB of
    mapped pages in the process.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self._offset = f.tell()
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise ValueError(f"{self.path} is not a (N, D) float32 embedding file")
        self._shape = shape

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def dim(self) -> int:
        return self._shape[1]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        start, stop = max(0, start), min(stop, len(self))
        with open(self.path, "rb") as f:
            f.seek(self._offset + start * self.dim * 4)
            data = np.fromfile(f, dtype=np.float32, count=max(0, stop - start) * self.dim)
        return torch.from_numpy(data.reshape(-1, self.dim))

    def chunks(self, size: int = 8192) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), size):
            yield self.rows(start, start + size)


def _write(model: nn.Module, gallery: Gallery, path: Path, batch_size: int) -> None:
    """Embed ``gallery`` into ``path`` (.npy) chunk by chunk; the file appears only when complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            rows, dim = 0, None
            for images in gallery.chunks(batch_size):
                e = np.ascontiguousarray(embed(model, images, batch_size).numpy(), dtype=np.float32)
                if dim is None:
                    dim = e.shape[1]
                    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                              "shape": (len(gallery), dim)}
                    np.lib.format.write_array_header_2_0(f, header)
                f.write(e.tobytes())
                rows += len(e)
            if dim is None:
                np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (0, 0)})
            if rows != len(gallery):
                raise RuntimeError(f"the gallery yielded {rows} images, not the {len(gallery)} it announced")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _matches(model: nn.Module, gallery: Gallery, store: GalleryEmbeddings, batch_size: int) -> bool:
    if len(store) != len(gallery):
        return False
    if not len(gallery):
        return True
    first = next(gallery.chunks(CHECK_ROWS))
    fresh, kept = embed(model, first, batch_size), store.rows(0, len(first))
    return fresh.shape == kept.shape and torch.allclose(fresh, kept, rtol=1e-3, atol=1e-4 * fresh.abs().max().item())


def cache_path(cache_dir: str | Path, model_key: dict, gallery: Gallery) -> Path:
    blob = json.dumps({"model": model_key, "gallery": gallery.key, "version": STORE_VERSION}, sort_keys=True,
                      default=str)
    return Path(cache_dir).expanduser() / "embeddings" / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}.npy"


@contextlib.contextmanager
def gallery_embeddings(model: nn.Module, gallery: Gallery, cache_dir: str | Path | None = None,
                       model_key: dict | None = None, batch_size: int = 256) -> Iterator[GalleryEmbeddings]:
    """The embeddings of ``gallery`` by ``model``: from the cache when valid, else computed (and cached when
    ``cache_dir`` and ``model_key`` are given; otherwise in a temporary file deleted on exit)."""
    was_training = model.training
    model.eval()
    try:
        if cache_dir is None or model_key is None:
            with tempfile.TemporaryDirectory(prefix="opom-gallery-") as tmp:
                path = Path(tmp) / "embeddings.npy"
                _write(model, gallery, path, batch_size)
                yield GalleryEmbeddings(path)
            return
        path = cache_path(cache_dir, model_key, gallery)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            store = GalleryEmbeddings(path)
            if _matches(model, gallery, store, batch_size):
                log.info("gallery embeddings from the cache: %s (%d)", path, len(store))
                yield store
                return
            log.warning("cached gallery embeddings %s do not match the model any more; recomputing", path)
        log.info("embedding %d gallery images -> %s", len(gallery), path)
        _write(model, gallery, path, batch_size)
        yield GalleryEmbeddings(path)
    finally:
        model.train(was_training)
