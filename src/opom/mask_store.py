"""Masks of identities outside the current batch, on disk: crafting memory for one batch, not for every identity.

Every mask is a float32 (3, H, W) tensor: 147 KiB at 112 x 112, 147 GiB for a million identities. With a
:class:`MaskStore` the crafter (:class:`~opom.module.MaskCrafter`) keeps only the batch it crafts as its learnable
parameter and writes each finished batch here: a scratch file in the job's output folder, memory-mapped, whose
written pages are handed back to the kernel after every batch (they stay in the file, not in the process). The
file is unlinked as soon as it is created, so its disk space returns when the job ends — also when it crashes —
and no stray file is left behind. :meth:`MaskStore.save` writes the mask file (safetensors) from it in chunks
(:func:`write_safetensors`, which also merges shard files without reading them whole).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from opom.errors import ConfigError, UserError

CHUNK_BYTES = 64 * 1024 * 1024  # bytes of masks copied at a time when saving or merging


class MaskStore:
    """Every identity's mask (I, 3, H, W) float32 in a memory-mapped scratch file under ``folder``."""

    def __init__(self, folder: str | Path, num_identities: int, image_size: int):
        self.shape = (int(num_identities), 3, int(image_size), int(image_size))
        self.row_bytes = 3 * self.shape[2] * self.shape[3] * 4
        size = max(self.row_bytes * self.shape[0], 1)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=folder, prefix=".masks-", suffix=".f32")
        try:
            os.ftruncate(fd, size)  # sparse: zeros that take no disk space until written
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED)
        except OSError as err:
            raise UserError(f"cannot keep {size / 2**30:.1f} GiB of masks on disk in {str(folder)!r} ({err}): "
                            f"free space there, or choose another paths.output_dir") from err
        finally:
            os.close(fd)
            os.unlink(path)  # the mapping keeps the file alive until the store is dropped
        self.masks = torch.frombuffer(self._map, dtype=torch.float32, count=self.shape[0] * self.row_bytes // 4
                                      ).view(self.shape)
        """All masks: a memory-mapped tensor (reading a row pages it in from the file)."""

    def __len__(self) -> int:
        return self.shape[0]

    def write(self, start: int, masks: torch.Tensor) -> None:
        """Store the masks of identities ``start .. start + len(masks) - 1`` and release their pages."""
        self.masks[start:start + len(masks)].copy_(masks.detach())
        self.release(start, start + len(masks))

    def release(self, start: int, stop: int) -> None:
        """Hand the pages of rows ``start .. stop - 1`` back to the kernel (their data stays in the file)."""
        first = start * self.row_bytes // mmap.PAGESIZE * mmap.PAGESIZE
        last = min(stop * self.row_bytes, len(self._map))
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def save(self, path: str | Path, metadata: dict[str, str]) -> Path:
        """Write the masks as a mask file (safetensors, ``metadata``) in chunks: memory for one chunk."""
        rows = max(1, CHUNK_BYTES // self.row_bytes)

        def chunks():
            for start in range(0, self.shape[0], rows):
                stop = min(start + rows, self.shape[0])
                yield memoryview(self._map)[start * self.row_bytes:stop * self.row_bytes]
                self.release(start, stop)

        return write_safetensors(path, metadata, self.shape, chunks())


def write_safetensors(path: str | Path, metadata: dict[str, str], shape: tuple[int, ...], chunks: Iterable,
                      name: str = "masks") -> Path:
    """Write one float32 tensor ``name`` of ``shape`` as a safetensors file, its data given as consecutive
    ``chunks`` (contiguous float32 tensors or buffers), atomically (a temporary file, then a rename): memory
    for one chunk, never for the whole tensor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbytes = 4 * math.prod(shape)
    header = json.dumps({"__metadata__": metadata,
                         name: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, nbytes]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        written = 0
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            for chunk in chunks:
                if isinstance(chunk, torch.Tensor):
                    chunk = chunk.detach().to("cpu", torch.float32).contiguous().numpy()
                chunk = memoryview(chunk).cast("B")
                f.write(chunk)
                written += len(chunk)
        if written != nbytes:
            raise ValueError(f"{written} bytes of data for a tensor of shape {tuple(shape)} ({nbytes} bytes)")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

STORE_CHOICES = ("auto", "memory", "disk")
AUTO_DISK_BYTES = 2 * 2**30  # crafting.mask_store=auto keeps larger mask sets on disk


def choose_mask_store(choice: str, folder: str | Path, num_identities: int, image_size: int) -> MaskStore | None:
    """``crafting.mask_store``: ``memory`` keeps every mask in memory (None: the crafter's parameter holds them),
    ``disk`` a :class:`MaskStore` under ``folder``, ``auto`` the store when the masks would take more than
    2 GiB (about 14,000 identities at 112 x 112)."""
    if choice not in STORE_CHOICES:
        raise ConfigError(f"crafting.mask_store must be one of {', '.join(STORE_CHOICES)}, got {choice!r}")
    big = num_identities * 3 * image_size * image_size * 4 > AUTO_DISK_BYTES
    return MaskStore(folder, num_identities, image_size) if choice == "disk" or (choice == "auto" and big) else None
