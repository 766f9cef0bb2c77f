"""Real face photos that registry packages ship, and the small labelled real-photo benchmark built from them.

No registry package ships a labelled face dataset, but three ship a few real photos:

- the ``face_recognition`` 1.3.0 sdist (PyPI; MIT): ``tests/test_images/obama.jpg``, ``obama2.jpg``,
  ``obama3.jpg`` and ``biden.jpg``;
- the ``insightface`` 2.1 wheel (PyPI; MIT): ``insightface/data/images/t1.jpg``, a group photo of 6 people;
- the ``@vladmandic/face-api`` 1.7.15 tarball (npm; MIT): ``demo/sample1..6.jpg``, six group photos.

``make test-assets`` fetches them: the two PyPI files into ``~/.cache/opom-test-photos`` (``$OPOM_TEST_PHOTOS``;
downloaded with ``pip download``, never installed) and the npm tarball's files with the models
(:mod:`opom.models.npm_assets`). Nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from opom.models.npm_assets import AssetError, find_file

SDIST = "face_recognition-1.3.0.tar.gz"
WHEEL = "insightface-2.1-py3-none-any.whl"
FETCH = "run `make test-assets` (pip download of the face_recognition sdist and the insightface wheel, npm pack of " \
        "@vladmandic/face-api)"


@dataclass(frozen=True)
class SourcePhoto:
    name: str  # file name used in the benchmark (unique)
    package: str  # where it comes from
    member: str  # path inside the package


SOURCE_PHOTOS: tuple[SourcePhoto, ...] = (
    *(SourcePhoto(f"{n}.jpg", SDIST, f"face_recognition-1.3.0/tests/test_images/{n}.jpg")
      for n in ("obama", "obama2", "obama3", "biden")),
    SourcePhoto("t1.jpg", WHEEL, "insightface/data/images/t1.jpg"),
    *(SourcePhoto(f"sample{i}.jpg", "face-api", f"demo/sample{i}.jpg") for i in range(1, 7)),
)


def photos_dir() -> Path:
    """Where ``make test-assets`` puts the PyPI files: ``$OPOM_TEST_PHOTOS`` or ``~/.cache/opom-test-photos``."""
    return Path(os.environ.get("OPOM_TEST_PHOTOS") or Path.home() / ".cache" / "opom-test-photos").expanduser()


def read_source_photo(photo: SourcePhoto, folder: str | Path | None = None) -> bytes:
    """The bytes of one source photo, read from its package file (never unpacked to disk)."""
    if photo.package == "face-api":
        return find_file("face-api", photo.member).read_bytes()
    archive = Path(folder).expanduser() if folder else photos_dir()
    archive = archive / photo.package
    if not archive.is_file():
        raise AssetError(f"{photo.package} is not in {str(archive.parent)!r}: {FETCH}")
    if photo.package.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            return z.read(photo.member)
    with tarfile.open(archive) as tar:
        member = tar.extractfile(photo.member)
        if member is None:
            raise AssetError(f"{photo.member} is not a file in {archive.name}")
        return member.read()


def export_source_photos(dest: str | Path, folder: str | Path | None = None) -> list[Path]:
    """Write every source photo into ``dest`` (created) and return their paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for photo in SOURCE_PHOTOS:
        path = dest / photo.name
        if not path.is_file():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(read_source_photo(photo, folder))
            os.replace(tmp, path)
        paths.append(path)
    return paths
