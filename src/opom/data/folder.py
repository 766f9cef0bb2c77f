"""Labelled face folders, ``<root>/<identity>/<image>``, of aligned crops (for FR training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from opom.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def scan_identity_folders(root: str | Path) -> dict[str, list[Path]]:
    """``{identity: [image paths]}`` in sorted order; identities without images are left out."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist (expected <root>/<identity>/<images>)")
    people = {}
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            people[person.name] = images
    if not people:
        raise DatasetError(f"no identity folders with images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
    return people


def read_aligned(path: Path, size: int = 112) -> torch.Tensor:
    """An aligned crop as uint8 RGB (3, size, size); other sizes are resized.

    Decoded by :func:`opom.data.photos.read_photo` (EXIF orientation, any colour mode; unusable files raise
    its ``PhotoError``, a :class:`DatasetError`). Embedded colour profiles are not applied, as OpenCV's reader
    in the reference does not apply them.
    """
    from opom.data.photos import read_photo

    rgb, _ = read_photo(path, icc=False)
    image = torch.from_numpy(np.array(rgb, order="C")).permute(2, 0, 1)  # a writable copy
    if image.shape[-2:] != (size, size):
        image = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    return image


class FolderFaces(Dataset):
    """Every image of every identity folder, labelled 0..K-1 by sorted identity name.

    ``flip`` adds the usual random horizontal flip of FR training.
    """

    def __init__(self, root: str | Path, image_size: int = 112, flip: bool = True):
        people = scan_identity_folders(root)
        self.identities = list(people)
        self.items = [(path, label) for label, name in enumerate(self.identities) for path in people[name]]
        self.image_size, self.flip = image_size, flip

    @property
    def num_classes(self) -> int:
        return len(self.identities)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        image = read_aligned(path, self.image_size)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, label
