"""Real tier: `prepare` with the real detectors (YuNet, MTCNN) on real photos from PyPI packages (``make test-assets``).

Photos: skimage.data.astronaut(); obama.jpg, obama2.jpg, obama3.jpg, biden.jpg from the face_recognition 1.3.0 sdist;
t1.jpg (a group photo, 6 faces) and Tom_Hanks_54745.png (an aligned 112x112 crop) from the insightface 2.1 wheel.

Landmark check, for each detector: it re-detects the 5 points on each aligned crop it made (upsampled 2x and padded,
since detectors are unsteady on a face that fills the whole image), and the MEAN over the 5 points of the distance
to where the alignment put them must be < 2 px. The distance to the template itself cannot be that small: a
least-squares similarity cannot make a face's own geometry (a wide smile, a turned head) equal the average template;
these photos keep a residual of 2-5 px mean. So the test also checks that the crop adds at most 1 px to that residual.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from opom.data.alignment import transform_points
from opom.data.detectors import build_detector
from opom.data.prepare import MANIFEST_NAME, load_manifest, prepare
from opom.masks import ARCFACE_TEMPLATE_112

pytestmark = pytest.mark.real

TEMPLATE = np.asarray(ARCFACE_TEMPLATE_112)
CACHE = Path(os.path.expanduser("~/.cache/opom-test-photos"))
SDIST = CACHE / "face_recognition-1.3.0.tar.gz"
WHEEL = CACHE / "insightface-2.1-py3-none-any.whl"
PORTRAITS = ["astronaut/astronaut.png", "obama/obama.jpg", "obama/obama2.jpg", "obama/obama3.jpg",
             "biden/biden.jpg"]


def _sdist_photo(name: str) -> bytes:
    with tarfile.open(SDIST) as tar:
        for member in tar.getmembers():
            if member.name.endswith(f"tests/test_images/{name}"):
                return tar.extractfile(member).read()
    raise FileNotFoundError(name)


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    if not SDIST.is_file() or not WHEEL.is_file():
        pytest.skip(f"real test photos missing in {CACHE}: run make test-assets")
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (astronaut photo) is not installed")
    root = tmp_path_factory.mktemp("photos")
    for folder in ("astronaut", "obama", "biden", "group", "hanks"):
        (root / folder).mkdir()
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut" / "astronaut.png")
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        (root / "obama" / name).write_bytes(_sdist_photo(name))
    (root / "biden" / "biden.jpg").write_bytes(_sdist_photo("biden.jpg"))
    with zipfile.ZipFile(WHEEL) as wheel:
        (root / "group" / "t1.jpg").write_bytes(wheel.read("insightface/data/images/t1.jpg"))
        (root / "hanks" / "Tom_Hanks_54745.png").write_bytes(wheel.read("insightface/data/images/Tom_Hanks_54745.png"))
    return root


@pytest.fixture(scope="module")
def largest(photo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("largest")
    return prepare(photo_root, out, choose="largest", workers=1, progress=False, quiet=True)  # YuNet, the default


@pytest.fixture(scope="module")
def largest_mtcnn(photo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("largest_mtcnn")
    return prepare(photo_root, out, choose="largest", workers=1, progress=False, quiet=True, detector="mtcnn")


@pytest.fixture(scope="module")
def every_face(photo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("all")
    return prepare(photo_root, out, choose="all", workers=2, progress=False, quiet=True)  # the process pool


@pytest.fixture(scope="module")
def detectors():
    return {"yunet": build_detector("yunet"), "mtcnn": build_detector("mtcnn")}


def redetect(detector, crop: np.ndarray, up: int = 2, pad: int = 56) -> np.ndarray:
    """A detector's 5 points on an aligned crop, in crop pixels (the crop upsampled ``up`` times and padded)."""
    big = np.asarray(Image.fromarray(crop).resize((crop.shape[1] * up, crop.shape[0] * up), Image.BICUBIC))
    canvas = np.zeros((big.shape[0] + 2 * pad * up, big.shape[1] + 2 * pad * up, 3), np.uint8)
    canvas[pad * up: pad * up + big.shape[0], pad * up: pad * up + big.shape[1]] = big
    boxes, scores, landmarks = detector.detect(canvas)
    assert len(boxes), "no face found on the aligned crop"
    return (landmarks[int(np.argmax(scores))] - pad * up + 0.5) / up - 0.5


def test_portraits_are_detected_and_aligned(largest):
    for rel in PORTRAITS:
        entry = largest.entries[rel]
        assert entry["outcome"] in ("ok", "multiple_faces"), (rel, entry.get("reason"))
        (crop,) = entry["crops"]
        assert crop["score"] > 0.85  # YuNet's scale (MTCNN gives > 0.99 on these)
        image = np.asarray(Image.open(largest.output_root / crop["path"]))
        assert image.shape == (112, 112, 3)
        assert len(crop["landmarks"]) == 5 and np.asarray(crop["transform"]).shape == (2, 3)


@pytest.mark.parametrize("name", ["yunet", "mtcnn"])
def test_redetected_landmarks_land_where_the_alignment_put_them(largest, largest_mtcnn, detectors, name):
    made = {"yunet": largest, "mtcnn": largest_mtcnn}[name]
    detector = detectors[name]
    report = []
    for rel in PORTRAITS:
        crop = made.entries[rel]["crops"][0]
        image = np.asarray(Image.open(made.output_root / crop["path"]))
        expected = transform_points(crop["transform"], crop["landmarks"])  # = the template, up to the fit residual
        found = redetect(detector, image)
        moved = np.linalg.norm(found - expected, axis=1).mean()
        residual = np.linalg.norm(expected - TEMPLATE, axis=1).mean()
        to_template = np.linalg.norm(found - TEMPLATE, axis=1).mean()
        report.append(f"{name} {rel}: re-detected vs placed {moved:.2f} px, vs template {to_template:.2f} px "
                      f"(fit residual {residual:.2f} px)")
        assert moved < 2.0, report[-1]
        assert to_template < residual + 1.0, report[-1]
    print("\n".join(report))


def test_group_photo_all_faces(every_face):
    entry = every_face.entries["group/t1.jpg"]
    assert entry["outcome"] == "ok" and entry["n_faces"] == 6 and len(entry["crops"]) == 6
    assert [c["path"] for c in entry["crops"]] == [f"group/t1_{k}.png" for k in range(6)]
    assert all((every_face.output_root / c["path"]).is_file() for c in entry["crops"])
    assert len({tuple(c["box"]) for c in entry["crops"]}) == 6


def test_group_photo_largest_and_central(largest, photo_root, tmp_path):
    entry = largest.entries["group/t1.jpg"]
    assert entry["outcome"] == "multiple_faces" and entry["n_faces"] == 6 and len(entry["crops"]) == 1
    boxes = np.array([f["box"] for f in entry["faces"]])
    assert entry["chosen"] == [int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))]
    group_only = tmp_path / "in" / "group"
    group_only.mkdir(parents=True)
    (group_only / "t1.jpg").write_bytes((photo_root / "group" / "t1.jpg").read_bytes())
    central = prepare(tmp_path / "in", tmp_path / "out", choose="central", workers=1, progress=False, quiet=True)
    c_entry = central.entries["group/t1.jpg"]
    w, h = c_entry["photo"]["width"], c_entry["photo"]["height"]
    centre_dist = np.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - w / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - h / 2)
    assert c_entry["chosen"] == [int(np.argmin(centre_dist))]


def test_tom_hanks_is_already_aligned(largest, photo_root):
    entry = largest.entries["hanks/Tom_Hanks_54745.png"]
    assert entry["outcome"] == "already_aligned"
    crop = np.asarray(Image.open(largest.output_root / entry["crops"][0]["path"]))
    original = np.asarray(Image.open(photo_root / "hanks" / "Tom_Hanks_54745.png").convert("RGB"))
    assert (crop == original).all()


def test_pool_and_in_process_runs_agree(largest, every_face):
    for rel in PORTRAITS:
        a, b = largest.entries[rel], every_face.entries[rel]
        assert a["sha256"] == b["sha256"] and len(b["crops"]) == a["n_faces"]
        np.testing.assert_allclose(b["crops"][a["chosen"][0]]["landmarks"], a["crops"][0]["landmarks"], atol=0.05)
    assert len(load_manifest(every_face.path)) == len(largest.entries) == 7
    assert every_face.path.name == MANIFEST_NAME


def test_yunet_and_mtcnn_landmarks_agree_within_about_two_crop_pixels(largest, largest_mtcnn):
    """The default detector's landmarks (YuNet's box, MTCNN's O-Net points) against the full MTCNN's on the same
    photos, in aligned-crop pixels (MTCNN's alignment): the figure the README and the benchmark quote (0.4-2.0 mean
    here; YuNet's own points were 1.9-4.0)."""
    report = []
    for rel in PORTRAITS:
        a, b = largest_mtcnn.entries[rel]["crops"][0], largest.entries[rel]["crops"][0]
        m = np.asarray(a["transform"])
        dist = np.linalg.norm(transform_points(m, b["landmarks"]) - transform_points(m, a["landmarks"]), axis=1)
        report.append(f"{rel}: yunet vs mtcnn {dist.mean():.2f} crop px mean, {dist.max():.2f} max")
        assert dist.mean() < 2.5 and dist.max() < 3.5, report[-1]
    print("\n".join(report))
