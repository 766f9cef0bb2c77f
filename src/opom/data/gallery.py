"""Distractor galleries: the one-photo people an identification gallery is padded with.

Galleries can hold a million faces, so they are never required to fit in memory: a gallery is anything with
``len()``, a ``key`` (a small dict that determines its images, part of the embedding cache key) and
``chunks(size)`` yielding uint8 image tensors (b, 3, H, W) in a fixed order. Three sources:

- :class:`TensorGallery` — images already in memory (small galleries, tests);
- :class:`FileGallery` — aligned image files, read chunk by chunk (MegaFace-style lists, folders);
- :class:`RenderedGallery` — the synthetic world's distractor people, rendered chunk by chunk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Gallery(Protocol):
    key: dict

    def __len__(self) -> int: ...

    def chunks(self, size: int) -> Iterator[torch.Tensor]: ...


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


class TensorGallery:
    """A gallery held in memory: uint8 (M, 3, H, W)."""

    def __init__(self, images: torch.Tensor):
        self.images = images
        self._key: dict | None = None

    @property
    def key(self) -> dict:
        if self._key is None:  # content hash, computed once and only when a cache asks for it
            data = self.images.contiguous().numpy().tobytes()
            self._key = {"tensor": hashlib.sha256(data).hexdigest()[:32], "shape": list(self.images.shape)}
        return self._key

    def __len__(self) -> int:
        return len(self.images)

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.images), size):
            yield self.images[start:start + size]


class FileGallery:
    """Aligned face images read from files, ``size`` x ``size`` (resized when needed), in the given order.

    The key names every file with its size and modification time, so an edited gallery is re-embedded.
    """

    def __init__(self, paths: Sequence[str | Path], size: int = 112):
        self.paths, self.size = [Path(p) for p in paths], size
        self._key: dict | None = None

    @property
    def key(self) -> dict:
        if self._key is None:
            stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in self.paths]
            self._key = {"files": _digest(stats), "count": len(self.paths), "size": self.size}
        return self._key

    def __len__(self) -> int:
        return len(self.paths)

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        from opom.data.folder import read_aligned

        for start in range(0, len(self.paths), size):
            yield torch.stack([read_aligned(p, self.size) for p in self.paths[start:start + size]])


class RenderedGallery:
    """``count`` images produced by ``render(start, stop)`` (uint8 (stop - start, 3, H, W)) chunk by chunk.

    ``key`` must determine the images completely (the synthetic world passes its seed, style and version).
    """

    def __init__(self, count: int, render: Callable[[int, int], torch.Tensor], key: dict):
        self.count, self.render, self.key = count, render, dict(key, count=count)

    def __len__(self) -> int:
        return self.count

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.count, size):
            yield self.render(start, min(start + size, self.count))


def as_gallery(distractors) -> Gallery:
    """A gallery from a gallery or an in-memory uint8 tensor."""
    if isinstance(distractors, torch.Tensor):
        return TensorGallery(distractors)
    if isinstance(distractors, Gallery):
        return distractors
    raise TypeError(f"distractors must be a uint8 tensor or a Gallery, got {type(distractors).__name__}")


def materialize(gallery: Gallery, limit: int | None = None) -> torch.Tensor:
    """The first ``limit`` images (all by default) as one tensor — for small galleries and tests only."""
    out, n = [], 0
    for chunk in gallery.chunks(256):
        out.append(chunk)
        n += len(chunk)
        if limit is not None and n >= limit:
            break
    return torch.cat(out)[:limit] if out else torch.empty(0, 3, 112, 112, dtype=torch.uint8)
