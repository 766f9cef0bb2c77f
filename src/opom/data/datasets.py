"""Real protection datasets of aligned 112x112 crops: a plain folder tree and the paper's list-file layouts.

Every dataset here builds a :class:`~opom.data.protection.ProtectionSet`: per identity (in a kept order,
with names) its first ``mask_images`` photos craft the mask and the next ``test_images`` are the
evaluation probes/gallery; a distractor pool fills the gallery. Photos of real users should go through
``prepare`` first (detection and 5-point alignment); these loaders expect aligned crops and resize any
other size to 112x112.

Layouts:
- ``folder``: ``<root>/<identity>/<images>`` (sorted), distractors from another folder (recursive).
- ``opom_lists`` (Privacy-Commons / Privacy-Celebrities): identity-ordered list files of image paths
  relative to ``data_dir`` — ``mask_images`` consecutive lines per identity in the train list, and
  ``test_images`` consecutive lines per identity in the test list (as the reference code reads them);
  distractors from the MegaFace challenge-2 list (``megaface``: the image path is the 2nd token of each
  line), LFW (``lfw``: ``<person>/<file>`` lines) or a plain list (one path per line).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from opom.data.folder import IMAGE_SUFFIXES, read_aligned, scan_identity_folders
from opom.data.gallery import FileGallery
from opom.data.protection import ProtectionSet
from opom.errors import DatasetError

log = logging.getLogger("opom")
SIZE = 112


def _stack(paths: list[Path]) -> torch.Tensor:
    if not paths:
        return torch.zeros(0, 3, SIZE, SIZE, dtype=torch.uint8)
    return torch.stack([read_aligned(p, SIZE) for p in paths])


def _distractor_paths(root: str | Path | None, limit: int | None) -> list[Path]:
    if not root:
        return []
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"distractor folder {str(root)!r} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths[:limit] if limit else paths


class FolderFacesProtection:
    """``dataset=folder``: people to protect from ``<root>/<identity>/<images>``; distractors from a folder."""

    def __init__(self, root: str, mask_images: int = 10, test_images: int = 5, identities: int | None = None,
                 distractor_root: str | None = None, distractors: int | None = None):
        self.root, self.mask_images, self.test_images = root, mask_images, test_images
        self.identities, self.distractor_root, self.distractors = identities, distractor_root, distractors

    def protection_set(self) -> ProtectionSet:
        people = scan_identity_folders(self.root)
        names = list(people)[: self.identities] if self.identities else list(people)
        need = self.mask_images + self.test_images
        log.info("reading %d identities from %s and distractors from %s", len(names), self.root, self.distractor_root)
        images = {n: _stack(people[n][:need]) for n in names}
        dis = FileGallery(_distractor_paths(self.distractor_root, self.distractors), SIZE)
        return ProtectionSet.from_identity_images(images, self.mask_images, self.test_images, dis)


def read_list(path: str | Path, fmt: str = "plain") -> list[str]:
    """Image paths of a list file: one per line (``plain``/``lfw``) or the 2nd token (``megaface``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"list file {str(path)!r} does not exist")
    if fmt not in ("plain", "lfw", "megaface"):
        raise DatasetError(f"unknown list format {fmt!r}; use plain, lfw or megaface")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        tokens = line.split()
        if fmt == "megaface":
            if len(tokens) < 2:
                raise DatasetError(f"{path}:{number}: a MegaFace list line has the image path as its 2nd token")
            entries.append(tokens[1])
        else:
            entries.append(line.strip())
    return entries


def _blocks(paths: list[str], per_identity: int, list_path: str) -> list[list[str]]:
    if per_identity < 1 or len(paths) % per_identity:
        raise DatasetError(f"{list_path} has {len(paths)} lines, not a multiple of {per_identity} images per "
                           f"identity: check dataset.mask_images / dataset.test_images for this list")
    return [paths[i:i + per_identity] for i in range(0, len(paths), per_identity)]


def _resolve(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise DatasetError(f"image {str(path)!r} listed but missing: check dataset.data_dir")
    return path


class OpomLists:
    """``dataset=privacy_commons`` / ``privacy_celebrities``: the reference's identity-ordered list files."""

    def __init__(self, data_dir: str, train_list: str, test_list: str, mask_images: int = 10, test_images: int = 5,
                 identities: int | None = None, distractor_list: str | None = None, distractor_dir: str | None = None,
                 distractor_format: str = "megaface", distractors: int | None = None):
        self.data_dir, self.train_list, self.test_list = Path(data_dir).expanduser(), train_list, test_list
        self.mask_images, self.test_images, self.identities = mask_images, test_images, identities
        self.distractor_list, self.distractor_dir = distractor_list, distractor_dir
        self.distractor_format, self.distractors = distractor_format, distractors

    def protection_set(self) -> ProtectionSet:
        train = _blocks(read_list(self.train_list), self.mask_images, self.train_list)
        test = _blocks(read_list(self.test_list), self.test_images, self.test_list)
        if len(train) != len(test):
            raise DatasetError(f"the train list has {len(train)} identities but the test list {len(test)}")
        if self.identities:
            train, test = train[: self.identities], test[: self.identities]
        images = {}
        for tr, te in zip(train, test, strict=True):
            name = Path(tr[0]).parent.name or Path(tr[0]).stem
            if name in images:
                name = f"{name}#{len(images)}"
            images[name] = _stack([_resolve(self.data_dir, p) for p in tr + te])
        dis_paths: list[Path] = []
        if self.distractor_list:
            base = Path(self.distractor_dir or self.data_dir).expanduser()
            listed = read_list(self.distractor_list, self.distractor_format)
            listed = listed[: self.distractors] if self.distractors else listed
            dis_paths = [_resolve(base, p) for p in listed]
        log.info("read %d identities and %d distractors from list files", len(images), len(dis_paths))
        return ProtectionSet.from_identity_images(images, self.mask_images, self.test_images,
                                                  FileGallery(dis_paths, SIZE))
