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

import json
import os
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from opom.data.alignment import Canvas
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


# ------------------------------------------------------------------------------------- the labelled benchmark
# People seen in more than one photo, by photo and (for group photos) a point inside their face box. Matched by the
# agreement of four independent model families (SFace, HSE FaceRes, dlib/face-api, MobileFace where it is able)
# and by looking at the faces; every other face of the photos is a different person by the same checks and serves
# as a distractor. Obama is named by the face_recognition package; the two women of face-api's demo photos are not
# named anywhere, so they are "face_api_a" and "face_api_b".
PEOPLE: dict[str, tuple[tuple[str, tuple[int, int] | None], ...]] = {
    "obama": (("obama.jpg", None), ("obama2.jpg", None), ("obama3.jpg", None)),
    "face_api_a": (("sample1.jpg", (1583, 326)), ("sample3.jpg", (1172, 353))),
    "face_api_b": (("sample1.jpg", (937, 545)), ("sample4.jpg", (345, 333))),
}
ALIGNMENT_VERSION = 1  # bump when the detection / alignment of the benchmark changes


@dataclass(frozen=True)
class HoldoutFold:
    """One protection case: ``person`` enrols with the faces ``enrol`` and the mask protects the face ``probe``,
    a photo the mask never saw."""

    name: str
    person: str
    probe: int
    enrol: tuple[int, ...]


@dataclass
class HoldoutSet:
    """Aligned real faces with their people, and the leave-one-photo-out folds of everyone with >= 2 photos.

    For the crafter it looks like a :class:`~opom.data.protection.ProtectionSet`: one "identity" per fold
    (``names``), its enrolment faces as ``mask_images`` (I, N, 3, S, S). Folds with fewer photos than the largest
    repeat theirs cyclically; for FIM and every method of opom a repeated photo changes nothing when the counts
    divide (1 photo in a batch of 2: the same gradient and the same subspace twice), which holds here.
    """

    faces: list[str]  # "<photo>#<k>"
    images: torch.Tensor  # uint8 (F, 3, S, S)
    people: list[str | None]  # person of each face, None for the distractors
    folds: list[HoldoutFold]
    canvas: Canvas

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.folds]

    @property
    def num_identities(self) -> int:
        return len(self.folds)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def mask_images(self) -> torch.Tensor:
        n = max(len(f.enrol) for f in self.folds)
        return torch.stack([self.images[[f.enrol[i % len(f.enrol)] for i in range(n)]] for f in self.folds])

    @property
    def probes(self) -> torch.Tensor:
        return self.images[[f.probe for f in self.folds]]


def _containing(faces: list[dict], point: tuple[int, int] | None) -> int | None:
    if point is None:
        return 0 if len(faces) == 1 else None
    for k, face in enumerate(faces):
        x0, y0, x1, y1 = face["box"]
        if x0 <= point[0] <= x1 and y0 <= point[1] <= y1:
            return k
    return None


class RealPhotos:
    """``dataset=real_photos``: the registry packages' real photos, aligned by opom's own pipeline (``prepare``:
    MTCNN, 5-point similarity) onto ``canvas`` images, labelled by :data:`PEOPLE`, split into leave-one-photo-out
    folds (:class:`HoldoutSet`). Built once and cached under ``cache_dir``."""

    real_people = True
    protocol = "holdout"

    def __init__(self, canvas: str = "canvas224", photos_dir: str | None = None, cache_dir: str | None = None,
                 min_score: float = 0.9):
        from opom.data.alignment import CANVASES

        if canvas not in CANVASES:
            raise AssetError(f"unknown canvas {canvas!r}; choose one of {', '.join(CANVASES)}")
        self.canvas_name, self.canvas = canvas, CANVASES[canvas]
        self.photos_dir, self.min_score = photos_dir, min_score
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "opom").expanduser()

    def key(self) -> dict:
        return {"canvas": self.canvas_name, "min_score": self.min_score, "version": ALIGNMENT_VERSION,
                "people": {p: [list(x) if x else None for _, x in faces] for p, faces in PEOPLE.items()},
                "photos": [p.name for p in SOURCE_PHOTOS]}

    def holdout_set(self) -> HoldoutSet:
        from opom.cache import cached

        data = cached(self.cache_dir, "real_photos", self.key(), self._build)
        faces = json.loads(bytes(data["faces"].tolist()).decode())
        names, people = faces["names"], faces["people"]
        folds = []
        for person in PEOPLE:
            mine = [i for i, p in enumerate(people) if p == person]
            for probe in mine:
                folds.append(HoldoutFold(f"{person}/{names[probe]}", person, probe,
                                         tuple(i for i in mine if i != probe)))
        return HoldoutSet(names, data["images"], people, folds, self.canvas)

    def _build(self) -> dict[str, torch.Tensor]:
        from opom.data.prepare import prepare

        with tempfile.TemporaryDirectory() as tmp:
            export_source_photos(Path(tmp) / "photos" / "all", self.photos_dir)
            # MTCNN, as the labels were made with (the faster default detector finds 27 of the 30 faces)
            prepare(Path(tmp) / "photos", Path(tmp) / "aligned", choose="all", template=self.canvas_name,
                    min_score=self.min_score, workers=1, progress=False, detector="mtcnn")
            names, images, people, found = [], [], [], set()
            for line in (Path(tmp) / "aligned" / "manifest.jsonl").read_text().splitlines():
                entry = json.loads(line)
                photo = Path(entry["relpath"]).name
                crops = entry.get("crops") or []
                labels = {_containing(crops, point): person for person, faces in PEOPLE.items()
                          for name, point in faces if name == photo}
                for k, crop in enumerate(crops):
                    names.append(f"{photo}#{k}")
                    people.append(labels.get(k))
                    found.add((labels.get(k), photo))
                    rgb = np.asarray(Image.open(Path(tmp) / "aligned" / crop["path"]).convert("RGB"))
                    images.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1))
        missing = [(p, n) for p, faces in PEOPLE.items() for n, _ in faces if (p, n) not in found]
        if missing:
            raise AssetError(f"the benchmark's labelled faces were not all found (missing {missing}); the photos or "
                             f"the face detector differ from what the labels were made with")
        meta = json.dumps({"names": names, "people": people}).encode()
        return {"images": torch.stack(images), "faces": torch.tensor(list(meta), dtype=torch.uint8)}
