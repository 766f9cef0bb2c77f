"""Protection sets: per identity, mask-training images and test images, plus a distractor pool.

This is the data contract between datasets and the rest of the framework. Images are uint8 tensors in
the aligned canonical space (3 x 112 x 112, RGB); identity order and names are kept, so a mask always
finds its person.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from opom.data.alignment import Canvas
from opom.data.gallery import Gallery
from opom.errors import DatasetError


@dataclass
class ProtectionSet:
    names: list[str]
    mask_images: torch.Tensor  # (I, N, 3, H, W) uint8
    test_images: torch.Tensor  # (I, T, 3, H, W) uint8
    distractors: torch.Tensor | Gallery  # uint8 (M, 3, H, W) or a streamed opom.data.gallery.Gallery
    canvas: Canvas = field(default_factory=Canvas)  # the images' aligned frame (default: the 112x112 crop)

    def __post_init__(self):
        i = len(self.names)
        if self.mask_images.shape[0] != i or self.test_images.shape[0] != i:
            raise DatasetError(f"{i} names but {self.mask_images.shape[0]} mask-image and "
                               f"{self.test_images.shape[0]} test-image identities")
        if self.test_images.shape[1] < 2:
            raise DatasetError("the evaluation needs at least 2 test images per identity (dataset.test_images >= 2)")

    @property
    def num_identities(self) -> int:
        return len(self.names)

    @property
    def image_size(self) -> int:
        return int(self.mask_images.shape[-1])

    @classmethod
    def from_identity_images(cls, images: dict[str, torch.Tensor], mask_images: int, test_images: int,
                             distractors: torch.Tensor) -> ProtectionSet:
        """Split each identity's images (in order) into ``mask_images`` then ``test_images``.

        Raises :class:`DatasetError` naming every identity that has fewer images than asked for.
        """
        if mask_images < 1 or test_images < 2:
            raise DatasetError(f"dataset.mask_images must be >= 1 and dataset.test_images >= 2, "
                               f"got {mask_images} and {test_images}")
        need = mask_images + test_images
        short = {name: len(x) for name, x in images.items() if len(x) < need}
        if short:
            listed = ", ".join(f"{n!r} has {c}" for n, c in list(short.items())[:5])
            more = f" (and {len(short) - 5} more)" if len(short) > 5 else ""
            raise DatasetError(
                f"{len(short)} identit{'y' if len(short) == 1 else 'ies'} ha{'s' if len(short) == 1 else 've'} "
                f"fewer than dataset.mask_images + dataset.test_images = {mask_images} + {test_images} = {need} "
                f"images: {listed}{more}. Lower dataset.mask_images / dataset.test_images, or add photos.")
        names = list(images)
        stack = torch.stack([images[n][:need] for n in names])
        return cls(names, stack[:, :mask_images].contiguous(), stack[:, mask_images:].contiguous(), distractors)


class IdentityChunks(Dataset):
    """Chunks of identities, each repeated for every attack iteration (chunk-major order).

    Item ``k`` is chunk ``k // iterations`` at iteration ``k % iterations``: one Lightning training step is
    one attack iteration, and only the current chunk's optimisation state is ever held in memory.
    ``ids`` index the rows of ``mask_images``; ``identities`` are the same people's positions in the whole
    protection set (``first_identity`` + row, for a shard of it), which seed anything drawn per identity.
    ``rows`` is ``(first, stop)`` of ``ids`` as plain ints: Lightning leaves them on the host, so the crafter
    finds its rows without reading a device tensor back (no host-device synchronisation per step).
    """

    def __init__(self, mask_images: torch.Tensor, chunk_size: int, iterations: int, first_identity: int = 0):
        self.images, self.iterations, self.first_identity = mask_images, iterations, first_identity
        n = mask_images.shape[0]
        self.chunks = [torch.arange(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]

    def __len__(self) -> int:
        return len(self.chunks) * self.iterations

    def __getitem__(self, k: int) -> dict:
        ids = self.chunks[k // self.iterations]
        # a chunk is a contiguous range: a view of the uint8 images, never a copy
        images = self.images[int(ids[0]):int(ids[-1]) + 1]
        return {"ids": ids, "identities": ids + self.first_identity, "images": images,
                "iteration": k % self.iterations, "rows": (int(ids[0]), int(ids[-1]) + 1)}


class ProtectionDataModule(L.LightningDataModule):
    """Serves a :class:`ProtectionSet` to the mask crafter, ``identities_per_batch`` identities at a time."""

    def __init__(self, protection: ProtectionSet, identities_per_batch: int, iterations: int,
                 first_identity: int = 0):
        super().__init__()
        if identities_per_batch < 1:
            raise DatasetError(f"identities_per_batch must be >= 1, got {identities_per_batch}")
        self.protection, self.identities_per_batch, self.iterations = protection, identities_per_batch, iterations
        self.first_identity = first_identity  # position of the first person in the whole set (identity shards)

    def train_dataloader(self) -> DataLoader:
        chunks = IdentityChunks(self.protection.mask_images, self.identities_per_batch, self.iterations,
                                self.first_identity)
        return DataLoader(chunks, batch_size=None, shuffle=False)
