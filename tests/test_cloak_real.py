"""Real tier: the cloak tool with the real MTCNN, SFace and dlib on real photos (``make test-assets``).

Photos: obama.jpg, obama2.jpg, obama3.jpg and biden.jpg from the face_recognition 1.3.0 sdist (see
tests/real_photos.py). SFace is the surrogate; dlib is the black box the mask never saw.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from real_photos import PhotosUnavailable, _fr_source, _read_from
from test_cloak import EPS, TEMPLATE, make_mask

from opom.cloak.blend import aligned_change
from opom.cloak.check import check
from opom.cloak.enroll import EnrollSettings, enroll
from opom.cloak.faces import detect_faces
from opom.cloak.mask import load_person_mask
from opom.cloak.protect import Protector, ProtectSettings, protect

pytestmark = pytest.mark.real


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    try:
        source = _fr_source()
    except PhotosUnavailable as err:
        pytest.skip(str(err))
    root = tmp_path_factory.mktemp("real")
    (root / "obama").mkdir()
    for name in ("obama", "obama2", "obama3"):
        (root / "obama" / f"{name}.jpg").write_bytes(_read_from(source, f"{name}.jpg"))
    (root / "biden.jpg").write_bytes(_read_from(source, "biden.jpg"))
    return root


@pytest.fixture(scope="module")
def detector():
    from opom.data.prepare import FaceDetector

    return FaceDetector()


def test_real_photo_mask_within_eps_plus_one_and_background_untouched(photos, detector, tmp_path):
    rgb = np.asarray(Image.open(photos / "obama" / "obama.jpg").convert("RGB"))
    src = tmp_path / "obama.png"  # lossless: every pixel outside the face must stay as it was
    Image.fromarray(rgb).save(src)
    before = _sha(src)
    prot = Protector(load_person_mask(make_mask(tmp_path / "m.safetensors")), ProtectSettings(choose="largest"),
                     detector=detector)
    entry = prot.protect_photo(src, tmp_path / "out.png")
    assert entry["outcome"] == "protected", entry
    assert _sha(src) == before
    got = np.asarray(Image.open(tmp_path / "out.png"))
    face = entry["faces"][entry["chosen"][0]]
    lm = np.asarray(face["landmarks"])
    assert np.abs(aligned_change(rgb, got, lm, TEMPLATE)).max() <= EPS + 1
    # an aligner that finds the face itself on the protected photo sees the same bound
    again = max(detect_faces(got, detector), key=lambda f: f.area)
    assert np.abs(again.landmarks - lm).max() < 4
    change = aligned_change(rgb, got, again.landmarks, TEMPLATE)
    assert np.abs(change).max() <= EPS + 1 and np.abs(change).mean() > 2
    # outside the face region (the box the crop covers, padded by 2 px) nothing changed
    from opom.cloak.blend import footprint_box

    y0, y1, x0, x1 = footprint_box(entry["protected_faces"][0]["transform"], (112, 112), rgb.shape[:2])
    outside = np.ones(rgb.shape[:2], bool)
    outside[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = False
    assert np.array_equal(got[outside], rgb[outside])
    assert (got != rgb).any(axis=2).mean() < 0.25  # the face region only, not the whole photo


@pytest.mark.slow  # ~90 s on 2 cores: SFace crafting, 13 MTCNN detections, dlib
def test_enroll_protect_check_with_sface_and_dlib(photos, detector, tmp_path, capsys):
    pytest.importorskip("dlib", reason="dlib-bin is not installed: pip install 'opom[zoo]'")
    originals = {p.name: _sha(p) for p in (photos / "obama").iterdir()}
    mask = tmp_path / "obama.safetensors"
    settings = EnrollSettings(strength="paper", iterations=8)  # SFace; FIM, 5 class-centre steps then the hull
    result = enroll([photos / "obama"], mask, settings=settings, detector=detector, progress=False, quiet=True)
    assert result.masks.surrogate == "sface" and result.masks.extra["match"]["threshold"] == pytest.approx(0.363)
    assert result.whitebox["protected_mean"] < result.whitebox["clean_mean"] - 0.3
    out = tmp_path / "out"
    entries = protect([photos / "obama", photos / "biden.jpg"], mask, out=out, detector=detector,
                      progress=False, quiet=True)
    outcomes = {e["source"].rsplit("/", 1)[-1]: e["outcome"] for e in entries}
    assert outcomes == {"obama.jpg": "protected", "obama2.jpg": "protected", "obama3.jpg": "protected",
                        "biden.jpg": "no_match"}  # --choose match: only the enrolled person is protected
    assert all(f["aligned_max_change"] <= EPS + 4 for e in entries for f in e.get("protected_faces", []))
    assert {p.name: _sha(p) for p in (photos / "obama").iterdir()} == originals
    res = check([photos / "obama"], report=out / "opom_protect_report.jsonl", detector=detector)
    printed = capsys.readouterr().out
    assert set(res.rates) == {"sface", "dlib"} and "dlib" in printed and "verdict" in printed
    rows = {(r["model"], r["photo"].rsplit("/", 1)[-1]): r for r in res.rows}
    assert len(rows) == 6
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        s, d = rows["sface", name], rows["dlib", name]
        assert s["clean_score"] >= 0.363 and d["clean_score"] < 0.6  # both recognise the clean originals
        assert s["protected_score"] < s["clean_score"] - 0.2  # the surrogate sees a different person
        assert d["protected_score"] > d["clean_score"]  # dlib moves away too (whether past 0.6 is the finding)
        assert s["verdict"] in ("protected", "NOT protected") and s["protected"] == (s["protected_score"] < 0.363)
    print(res.table())  # the numbers, for the log (pytest -s)


def test_real_video_pan_zoom_clip(photos, detector, tmp_path):
    from opom.cloak.video import pan_zoom_clip, protect_video

    av = pytest.importorskip("av")
    rgb = np.asarray(Image.open(photos / "obama" / "obama.jpg").convert("RGB"))
    clip = pan_zoom_clip(rgb, tmp_path / "obama.mp4", frames=12, size=(320, 240), centre=(0.5, 0.25), span=0.9)
    before = _sha(clip)
    prot = Protector(load_person_mask(make_mask(tmp_path / "m.safetensors")),
                     ProtectSettings(choose="largest", preset="veryfast"), detector=detector)
    entry = protect_video(prot, clip, tmp_path / "out.mp4", progress=False)
    assert entry["outcome"] == "protected", entry
    assert _sha(clip) == before
    assert entry["frames"] == 12 and entry["detections"] >= 10 and len(entry["chosen_tracks"]) == 1
    assert entry["landmark_jitter_px"]["smoothed"] < entry["landmark_jitter_px"]["detected"]
    assert entry["retention"] > 0.5
    with av.open(str(tmp_path / "out.mp4")) as out:
        assert out.streams.audio and out.streams.video[0].frames == 12


def test_opencv_sface_matches_the_zoo_sface():
    """protect and check run SFace through OpenCV (no torch); the embeddings must be the zoo's torch module's."""
    from real_photos import aligned_faces

    from opom.cloak.faces import SFaceRunner, embed_crops
    from opom.models.zoo import build_face_model

    try:
        crops = list(aligned_faces().values())
    except PhotosUnavailable as err:
        pytest.skip(str(err))
    ours = SFaceRunner().embed_crops(crops)
    zoo = embed_crops(build_face_model({"name": "sface", "arch": "sface"}), crops)
    cos = (ours * zoo).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(zoo, axis=1)
    assert cos.min() > 0.9999 and np.abs(ours - zoo).max() < 1e-3


def test_default_detector_finds_the_real_faces(photos):
    from opom.cloak.faces import DetectSettings

    detector = DetectSettings().build()
    for name in ("obama/obama.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "biden.jpg"):
        rgb = np.asarray(Image.open(photos / name).convert("RGB"))
        faces = detect_faces(rgb, detector)
        assert len(faces) == 1 and faces[0].size > 100, name
