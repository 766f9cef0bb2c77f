"""Fast tier: alignment maths, robust photo reading and the prepare step (MTCNN only on tiny synthetic images)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from opom.data.alignment import TEMPLATES, invert_affine, similarity_transform, transform_points, warp_to_template
from opom.data.photos import PhotoError, detection_view, read_photo, read_photo_bytes, to_full_resolution
from opom.data.prepare import MANIFEST_NAME, OUTCOMES, load_manifest, main, prepare, process_photo, scan_photos
from opom.errors import DatasetError
from opom.masks import ARCFACE_TEMPLATE_112

TEMPLATE = np.asarray(ARCFACE_TEMPLATE_112)


def _similarity(scale, angle, tx, ty):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


# ------------------------------------------------------------------------------------------------ alignment


@pytest.mark.parametrize("seed", range(5))
def test_similarity_transform_recovers_a_known_similarity(seed):
    rng = np.random.default_rng(seed)
    m = _similarity(rng.uniform(0.05, 8), rng.uniform(-np.pi, np.pi), *rng.uniform(-500, 500, 2))
    src = rng.uniform(0, 1000, (5, 2))
    np.testing.assert_allclose(similarity_transform(src, transform_points(m, src)), m, rtol=1e-9, atol=1e-7)


def test_similarity_transform_is_the_least_squares_fit_and_never_reflects():
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 200, (5, 2))
    dst = transform_points(_similarity(0.5, 0.3, 10, 20), src) + rng.normal(0, 2, (5, 2))
    m = similarity_transform(src, dst)
    best = ((transform_points(m, src) - dst) ** 2).sum()
    for _ in range(200):  # no nearby similarity fits better
        p = _similarity(0.5 + rng.normal(0, .01), 0.3 + rng.normal(0, .01), *(m[:, 2] + rng.normal(0, .5, 2)))
        assert ((transform_points(p, src) - dst) ** 2).sum() >= best - 1e-9
    mirrored = src * [-1, 1]
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0
    similarity = pytest.importorskip("skimage.transform").SimilarityTransform
    if hasattr(similarity, "from_estimate"):
        ref = similarity.from_estimate(src, dst)
    else:
        ref = similarity()
        ref.estimate(src, dst)
    np.testing.assert_allclose(m, ref.params[:2], atol=1e-9)


def test_similarity_transform_rejects_degenerate_points():
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), TEMPLATE)
    with pytest.raises(ValueError, match="NaN"):
        similarity_transform(np.full((5, 2), np.nan), TEMPLATE)


def _blob_image(points, shape, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape[:2], np.float64)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((img / img.max() * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _blob_centres(crop, points, radius=6):
    grey, found = crop[..., 0].astype(np.float64), []
    yy, xx = np.mgrid[: grey.shape[0], : grey.shape[1]]
    for x, y in points:
        w = grey * (np.hypot(xx - x, yy - y) <= radius)
        found.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.array(found)


@pytest.mark.parametrize("scale", [1.3, 0.25])  # 0.25 takes the area-averaged (antialias) path
def test_warp_puts_the_landmarks_on_the_template(scale):
    m = _similarity(scale, 0.35, 0, 0)
    src = transform_points(invert_affine(m), TEMPLATE)
    src += 40 / scale - src.min(0)
    shape = (int(src[:, 1].max() + 40 / scale), int(src[:, 0].max() + 40 / scale), 3)
    image = _blob_image(src, shape, sigma=2.0 / scale)
    crop, matrix = warp_to_template(image, src)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(transform_points(matrix, src), TEMPLATE, atol=1e-6)
    np.testing.assert_allclose(_blob_centres(crop, TEMPLATE), TEMPLATE, atol=0.25)


def test_templates_by_name():
    assert TEMPLATES["arcface_112"].size == (112, 112)
    assert TEMPLATES["arcface_160"].size == (160, 160)
    crop, _ = warp_to_template(np.zeros((300, 300, 3), np.uint8), TEMPLATE + 50, template="sphereface_96x112")
    assert crop.shape == (112, 96, 3)


# ------------------------------------------------------------------------------------------------ read_photo


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


def test_read_grayscale_rgba_cmyk_palette(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))
    rgb, info = read_photo(_save(tmp_path / "g.png", Image.fromarray(grey)))
    assert rgb.shape == (8, 25, 3) and (rgb == grey[..., None]).all() and info.mode == "L"

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, :, 3], rgba[1, :, 3], rgba[2:, :, 3] = 0, 255, 128
    rgb, info = read_photo(_save(tmp_path / "a.png", Image.fromarray(rgba)))
    assert info.alpha == "composited_on_white"
    assert (rgb[0] == 255).all()  # transparent -> white
    assert (rgb[1] == [200, 0, 0]).all()
    assert np.abs(rgb[2].astype(int) - [228, 127, 127]).max() <= 1  # half alpha: blended with white

    rgb, info = read_photo(_save(tmp_path / "c.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95))
    assert info.mode == "CMYK" and rgb.shape == (16, 16, 3)
    assert rgb[..., 0].min() > 200 and rgb[..., 1:].max() < 60  # red

    pal = Image.new("P", (2, 2))
    pal.putdata([0, 1, 2, 1])
    pal.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255])
    rgb, info = read_photo(_save(tmp_path / "p.png", pal))
    assert info.mode == "P" and (rgb[0, 1] == [200, 100, 0]).all() and (rgb[1, 0] == [0, 0, 255]).all()
    rgb, info = read_photo(_save(tmp_path / "pt.png", pal, transparency=1))
    assert info.alpha == "composited_on_white" and (rgb[0, 1] == 255).all() and (rgb[0, 0] == [10, 20, 30]).all()


def test_read_16_bit_images(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    rgb, info = read_photo(_save(tmp_path / "g16.png", Image.fromarray(values)))
    assert info.bit_depth == 16 and rgb[0, :, 0].tolist() == [0, 100, 255] and rgb.dtype == np.uint8
    rgb, _ = read_photo(_save(tmp_path / "g16.tif", Image.fromarray(values)))
    assert rgb[0, :, 1].tolist() == [0, 100, 255]
    rgb, info = read_photo(_save(tmp_path / "f.tif", Image.fromarray(np.array([[0, 0.5, 1]], np.float32))))
    assert rgb[0, :, 2].tolist() == [0, 128, 255]
    cv2 = pytest.importorskip("cv2")
    colour = np.zeros((2, 2, 3), np.uint16)
    colour[..., 2] = 65535  # BGR: red
    colour[..., 1] = 257 * 50
    cv2.imwrite(str(tmp_path / "c16.png"), colour)
    rgb, info = read_photo(tmp_path / "c16.png")
    assert info.bit_depth == 16 and rgb[0, 0].tolist() == [255, 50, 0]


def test_read_applies_exif_orientation(tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)  # 60 wide, 40 high, a red block top-left
    stored[:10, :10] = [255, 0, 0]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rgb, info = read_photo(_save(tmp_path / "r.jpg", Image.fromarray(stored), exif=exif, quality=95))
    assert info.exif_orientation == 6 and (info.stored_width, info.stored_height) == (60, 40)
    assert rgb.shape == (60, 40, 3) and (info.width, info.height) == (40, 60)
    assert rgb[:10, -10:, 0].mean() > 200 and rgb[:10, :10, 0].mean() < 50  # top-left went top-right


def test_read_multiframe_gif_takes_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "m.gif", save_all=True, append_images=frames[1:])
    rgb, info = read_photo(tmp_path / "m.gif")
    assert info.frames == 2 and info.notes and rgb[0, 0, 0] > 200


def test_broken_profile_is_ignored_not_fatal(tmp_path):
    rgb, info = read_photo(_save(tmp_path / "i.png", Image.new("RGB", (4, 4), (1, 2, 3)), icc_profile=b"junk" * 40))
    assert info.icc.startswith("ignored") and rgb[0, 0].tolist() == [1, 2, 3]
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb, info = read_photo(_save(tmp_path / "s.png", Image.new("RGB", (4, 4), (1, 2, 3)), icc_profile=srgb))
    assert info.icc == "srgb" and rgb[0, 0].tolist() == [1, 2, 3]
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    cmyk.info["icc_profile"] = srgb  # a profile of the wrong colour space: ignored, plain conversion
    rgb, info = read_photo(_save(tmp_path / "c.tif", cmyk, icc_profile=srgb))
    assert info.icc.startswith("ignored") and rgb[0, 0].tolist() == [255, 0, 0]


def _jpeg_bytes(size=(64, 48)):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("content, outcome, words", [
    (_jpeg_bytes()[:300], "unreadable", "truncated"),
    (b"hello, I am not a photo\n", "not_an_image", "not an image"),
    (b"", "not_an_image", "empty"),
    (b"\x00\x00\x00\x18ftypheic" + bytes(100), "unreadable", "pillow-heif"),
    (b"\x89PNG\r\n\x1a\n" + bytes(50), "unreadable", "PNG"),
])
def test_bad_files_raise_photo_error_with_a_reason(tmp_path, content, outcome, words):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(PhotoError, match=words) as err:
        read_photo(path)
    assert err.value.outcome == outcome and isinstance(err.value, DatasetError) and str(path) in str(err.value)
    assert path.read_bytes() == content


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(PhotoError) as err:
        read_photo(tmp_path / "nope.jpg")
    assert err.value.outcome == "unreadable"
    with pytest.raises(PhotoError) as err:
        read_photo(tmp_path)
    assert err.value.outcome == "not_an_image"


def test_decompression_bomb_is_too_large_with_one_message_and_no_pillow_warning(tmp_path, recwarn):
    from opom.data.inputs import set_max_pixels

    path = _save(tmp_path / "big.png", Image.new("RGB", (100, 100)))
    try:
        set_max_pixels(1000)
        with pytest.raises(PhotoError) as err:
            read_photo(path)
        assert err.value.outcome == "too_large" and "--max-pixels" in str(err.value)
        assert "MAX_IMAGE_PIXELS" not in str(err.value) and "100x100" in str(err.value)
        set_max_pixels(20_000)  # 10000 pixels: read, without Pillow's DecompressionBombWarning (its limit is off)
        monkey_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = 6000
        try:
            rgb, _ = read_photo(path)
        finally:
            Image.MAX_IMAGE_PIXELS = monkey_limit
        assert rgb.shape == (100, 100, 3)
        assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    finally:
        set_max_pixels(None)


def test_detection_view_maps_back_to_full_resolution():
    rgb = np.zeros((3000, 2000, 3), np.uint8)
    small, scale = detection_view(rgb, 1000)
    assert small.shape[:2] == (1000, 667)
    pts = np.array([[10.0, 20.0], [1999.0, 2999.0], [0.0, 0.0]])
    on_small = np.stack([(pts[:, 0] + 0.5) * scale[0] - 0.5, (pts[:, 1] + 0.5) * scale[1] - 0.5], 1)
    np.testing.assert_allclose(to_full_resolution(on_small, scale), pts, atol=1e-9)
    assert detection_view(rgb, 4000)[0] is rgb


# hypothesis: read_photo raises nothing but PhotoError, and valid images always read

_FORMATS = {"PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"], "JPEG": ["L", "RGB", "CMYK"],
            "TIFF": ["1", "L", "RGB", "RGBA", "CMYK", "I;16", "I", "F"], "BMP": ["1", "L", "P", "RGB"],
            "GIF": ["L", "P"], "WEBP": ["RGB", "RGBA"]}
_CASES = [(fmt, mode) for fmt, modes in _FORMATS.items() for mode in modes]
_MAGICS = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]
_HYP = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _encode(fmt, mode, w, h, seed):
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    img = base.convert(mode) if mode not in ("I;16",) else Image.fromarray(
        rng.integers(0, 65536, (h, w), dtype=np.uint16))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _read_via_file(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        path.write_bytes(data)
        try:
            return read_photo(path)
        finally:
            assert path.read_bytes() == data


@_HYP
@given(st.sampled_from(_MAGICS), st.binary(max_size=600))
def test_random_bytes_only_raise_photo_error(magic, tail):
    try:
        rgb, _ = _read_via_file(magic + tail)
    except PhotoError as err:
        assert err.outcome in ("not_an_image", "unreadable", "too_large") and err.reason
    else:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


@_HYP
@given(st.sampled_from(_CASES), st.integers(1, 40), st.integers(1, 40), st.floats(0, 0.999))
def test_truncated_images_only_raise_photo_error(case, w, h, keep):
    data = _encode(*case, w, h, seed=w * 41 + h)
    try:
        rgb, _ = read_photo_bytes(data[: int(len(data) * keep)])
    except PhotoError as err:
        assert err.outcome in ("not_an_image", "unreadable", "too_large") and err.reason
    else:
        assert rgb.dtype == np.uint8 and rgb.shape[2] == 3


@_HYP
@given(st.sampled_from(_CASES), st.integers(1, 70), st.integers(1, 70))
def test_valid_images_of_any_size_and_mode_read(case, w, h):
    rgb, info = read_photo_bytes(_encode(*case, w, h, seed=w + h))
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert (info.width, info.height) == (w, h) and info.format == case[0]


# ------------------------------------------------------------------------------------------------ prepare

_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255]])


class DotDetector:
    """A stand-in for MTCNN: the 5 'landmarks' are the centroids of 5 coloured dots."""

    def detect(self, rgb):
        pts = []
        for colour in _COLOURS:
            mask = np.abs(rgb.astype(int) - colour).max(-1) < 60
            if not mask.any():
                return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
            ys, xs = np.nonzero(mask)
            pts.append([xs.mean(), ys.mean()])
        pts = np.array(pts)
        span = pts.max(0) - pts.min(0)
        box = np.concatenate([pts.min(0) - span / 2, pts.max(0) + span / 2])
        return box[None], np.array([0.999]), pts[None]


def dot_detector(device="cpu"):
    return DotDetector()


class FixedDetector:
    """Faces at fixed boxes (in detection-image pixels), landmarks = the template scaled into each box."""

    def __init__(self, boxes, scores):
        self.boxes, self.scores = np.asarray(boxes, float), np.asarray(scores, float)

    def detect(self, rgb):
        lms = [[(b[0] + (b[2] - b[0]) * x / 112, b[1] + (b[3] - b[1]) * y / 112) for x, y in ARCFACE_TEMPLATE_112]
               for b in self.boxes]
        return self.boxes, self.scores, np.asarray(lms, float).reshape(-1, 5, 2)


def _dot_photo(points, shape, radius):
    img = np.full(shape + (3,), 120, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for (x, y), colour in zip(points, _COLOURS, strict=True):
        img[np.hypot(xx - x, yy - y) <= radius] = colour
    return img


def _hashes(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _lines(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


@pytest.fixture
def photo_tree(tmp_path):
    root = tmp_path / "in"
    (root / "alice").mkdir(parents=True)
    (root / "bob" / "2019").mkdir(parents=True)
    yy, xx = np.mgrid[:160, :200]
    gradient = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(gradient).save(root / "alice" / "gradient.png")  # a non-face
    (root / "alice" / "corrupt.jpg").write_bytes(_jpeg_bytes((120, 90))[:400])
    (root / "alice" / "notes.jpg").write_text("not a photo")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(root / "bob" / "aligned.png")
    (root / "bob" / ".DS_Store").write_bytes(b"\x00\x01")
    Image.fromarray(gradient[:100, :100]).save(root / "bob" / "2019" / "small.jpg")
    return root


EXPECTED = {"alice/gradient.png": "no_face", "alice/corrupt.jpg": "unreadable", "alice/notes.jpg": "not_an_image",
            "bob/aligned.png": "already_aligned", "bob/.DS_Store": "ignored", "bob/2019/small.jpg": "no_face"}


def test_prepare_records_every_file_is_idempotent_and_resumes(photo_tree, tmp_path):
    out = tmp_path / "out"
    before = _hashes(photo_tree)
    m = prepare(photo_tree, out, workers=1, progress=False, quiet=True)  # the real MTCNN
    assert {k: e["outcome"] for k, e in m.entries.items()} == EXPECTED
    assert set(OUTCOMES) >= set(EXPECTED.values())
    lines = _lines(out / MANIFEST_NAME)
    assert sorted(e["relpath"] for e in lines) == sorted(EXPECTED)  # exactly one entry per file
    aligned = m.entries["bob/aligned.png"]
    assert aligned["crops"][0]["path"] == "bob/aligned.png"
    crop = np.asarray(Image.open(out / "bob" / "aligned.png"))
    assert (crop == np.asarray(Image.open(photo_tree / "bob" / "aligned.png"))).all()  # copied, not re-aligned
    assert aligned["crops"][0]["transform"] == [[1, 0, 0], [0, 1, 0]]
    assert all(e["reason"] for e in lines if e["outcome"] not in ("ok", "already_aligned"))
    assert all(len(e["sha256"]) == 64 for e in lines)
    assert _hashes(photo_tree) == before  # originals untouched

    text = (out / MANIFEST_NAME).read_text()
    again = prepare(photo_tree, out, workers=1, progress=False, quiet=True)
    assert again.processed == 0 and again.skipped == len(EXPECTED) and (out / MANIFEST_NAME).read_text() == text

    # an interrupted run: the last line half written, the one before lost
    kept = text.splitlines(keepends=True)
    (out / MANIFEST_NAME).write_text("".join(kept[:-2]) + kept[-1][: len(kept[-1]) // 2])
    resumed = prepare(photo_tree, out, workers=1, progress=False, quiet=True)
    assert resumed.processed == 2 and {k: e["outcome"] for k, e in resumed.entries.items()} == EXPECTED
    assert sorted(load_manifest(out / MANIFEST_NAME)) == sorted(EXPECTED)
    assert _hashes(photo_tree) == before
    assert prepare(photo_tree, out, workers=1, progress=False, quiet=True).processed == 0


def test_prepare_redoes_changed_files_and_settings(photo_tree, tmp_path):
    out = tmp_path / "out"
    prepare(photo_tree, out, workers=1, progress=False, quiet=True, detector_factory=dot_detector)
    (photo_tree / "alice" / "notes.jpg").write_bytes(b"changed, still not a photo")
    m = prepare(photo_tree, out, workers=1, progress=False, quiet=True, detector_factory=dot_detector)
    assert m.processed == 1
    m = prepare(photo_tree, out, workers=1, progress=False, quiet=True, detector_factory=dot_detector,
                min_face_size=10)
    assert m.processed == len(EXPECTED)
    m = prepare(photo_tree, out, workers=1, progress=False, quiet=True, detector_factory=dot_detector,
                min_face_size=10, resume=False)
    assert m.processed == len(EXPECTED)


def test_prepare_maps_landmarks_from_a_downscaled_rotated_photo(tmp_path):
    truth = transform_points(_similarity(9.0, 0.1, 700, 300), TEMPLATE)  # a face ~400 px wide
    upright = _dot_photo(truth, (2000, 2600), radius=25)
    root = tmp_path / "in" / "carol"
    root.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # stored sideways; the viewer turns it upright
    Image.fromarray(stored).save(root / "sideways.png", exif=exif)
    m = prepare(tmp_path / "in", tmp_path / "out", workers=1, max_side=800, progress=False, quiet=True,
                detector_factory=dot_detector)
    entry = m.entries["carol/sideways.png"]
    assert entry["outcome"] == "ok" and entry["photo"]["exif_orientation"] == 6
    assert entry["detect_scale"] == pytest.approx(800 / 2600, abs=1e-3)
    crop_record = entry["crops"][0]
    np.testing.assert_allclose(crop_record["landmarks"], truth, atol=0.5)
    np.testing.assert_allclose(transform_points(crop_record["transform"], truth), TEMPLATE, atol=0.2)
    crop = np.asarray(Image.open(tmp_path / "out" / crop_record["path"]))
    np.testing.assert_allclose(DotDetector().detect(crop)[2][0], TEMPLATE, atol=0.6)


def test_choose_largest_central_all_and_filters(tmp_path):
    root = tmp_path / "in" / "dave"
    root.mkdir(parents=True)
    Image.new("RGB", (1000, 800), (90, 90, 90)).save(root / "two.png")
    faces = FixedDetector([[0, 0, 300, 300], [430, 330, 580, 480], [900, 10, 950, 60]], [0.99, 0.98, 0.5])

    def run(**kw):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        m = prepare(tmp_path / "in", out, workers=1, progress=False, quiet=True,
                    detector_factory=lambda device: faces, **kw)
        return m.entries["dave/two.png"], out

    entry, out = run(choose="largest")
    assert entry["outcome"] == "multiple_faces" and entry["chosen"] == [0] and entry["n_faces"] == 2
    assert entry["n_detections"] == 3 and (out / "dave" / "two.png").is_file()
    assert run(choose="central")[0]["chosen"] == [1]
    entry, out = run(choose="all")
    assert entry["outcome"] == "ok" and entry["chosen"] == [0, 1]
    assert [c["path"] for c in entry["crops"]] == ["dave/two_0.png", "dave/two_1.png"]
    entry, _ = run(min_face_size=200)
    assert entry["outcome"] == "ok" and entry["chosen"] == [0] and entry["n_faces"] == 1
    entry, _ = run(min_face_size=400)
    assert entry["outcome"] == "too_small" and "300" in entry["reason"] and "crops" not in entry
    entry, _ = run(min_score=0.995)
    assert entry["outcome"] == "no_face" and "3 detections below" in entry["reason"]


def test_same_stem_sources_get_distinct_crops_and_stale_crops_go(tmp_path):
    root = tmp_path / "in" / "erin"
    root.mkdir(parents=True)
    pts = np.array([[60.0, 70], [110, 70], [85, 100], [65, 125], [105, 125]])
    Image.fromarray(_dot_photo(pts, (200, 170), 5)).save(root / "photo.png")
    Image.fromarray(_dot_photo(pts + 10, (200, 170), 5)).save(root / "photo.bmp")
    out = tmp_path / "out"
    m = prepare(tmp_path / "in", out, workers=1, progress=False, quiet=True, detector_factory=dot_detector)
    paths = sorted(c["path"] for e in m.entries.values() for c in e["crops"])
    assert paths == ["erin/photo-2.png", "erin/photo.png"] and all((out / p).is_file() for p in paths)
    (root / "photo.bmp").write_bytes(b"now broken")
    m = prepare(tmp_path / "in", out, workers=1, progress=False, quiet=True, detector_factory=dot_detector)
    assert m.entries["erin/photo.bmp"]["outcome"] == "not_an_image"
    # photo.bmp (sorted first) had erin/photo.png: removed with its source; photo.png's crop stays
    assert not (out / "erin" / "photo.png").exists() and (out / "erin" / "photo-2.png").is_file()


class _Boom:
    def detect(self, rgb):
        raise RuntimeError("detector exploded")


def test_unexpected_errors_are_recorded_and_retried(photo_tree, tmp_path):
    out = tmp_path / "out"
    m = prepare(photo_tree, out, workers=1, progress=False, quiet=True, detector_factory=lambda d: _Boom())
    assert m.entries["alice/gradient.png"]["outcome"] == "error"
    assert "exploded" in m.entries["alice/gradient.png"]["reason"]
    assert m.entries["alice/notes.jpg"]["outcome"] == "not_an_image"  # the batch went on
    m = prepare(photo_tree, out, workers=1, progress=False, quiet=True, detector_factory=dot_detector)
    assert m.processed == 2 and m.entries["alice/gradient.png"]["outcome"] == "no_face"


def test_flat_folder_is_one_identity_and_output_is_excluded(tmp_path):
    flat = tmp_path / "holiday"
    flat.mkdir()
    Image.new("RGB", (50, 50)).save(flat / "a.jpg")
    jobs, _ = scan_photos(flat)
    assert [(j.identity, j.relpath) for j in jobs] == [("holiday", "a.jpg")]
    m = prepare(flat, flat / "aligned", workers=1, progress=False, quiet=True, detector_factory=dot_detector)
    assert list(m.entries) == ["a.jpg"] and m.entries["a.jpg"]["outcome"] == "no_face"
    assert prepare(flat, flat / "aligned", workers=1, progress=False, quiet=True).processed == 0


def test_process_photo_never_raises(tmp_path):
    from opom.data.prepare import PhotoJob, PrepareSettings

    job = PhotoJob(str(tmp_path / "gone.jpg"), "x/gone.jpg", "x", "gone")
    entry = process_photo(job, PrepareSettings(), DotDetector())
    assert entry["outcome"] == "error" and "FileNotFoundError" in entry["reason"]


def test_cli_exit_codes(photo_tree, tmp_path, capsys):
    assert main([str(photo_tree), str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "unreadable 1" in printed and str(tmp_path / "out" / MANIFEST_NAME) in printed
    with pytest.raises(SystemExit) as err:
        main([str(photo_tree), str(tmp_path / "o2"), "--choose", "biggest"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("error:") and len(message.strip().splitlines()) == 1
    assert main([str(tmp_path / "missing"), str(tmp_path / "o3")]) == 2
    message = capsys.readouterr().err
    assert "does not exist" in message and len(message.strip().splitlines()) == 1
    assert main([str(photo_tree), str(photo_tree)]) == 2
    assert main([str(photo_tree), str(tmp_path / "o4"), "--workers", "0"]) == 2


def crash_on_dots(device="cpu"):
    return _CrashOnDots()


class _CrashOnDots(DotDetector):
    def detect(self, rgb):
        if (rgb == [255, 0, 255]).all(-1).any():
            os._exit(3)  # a decoder segfault / OOM kill, as far as the pool can tell
        return super().detect(rgb)


@pytest.mark.slow
def test_worker_pool_survives_a_crashing_file(tmp_path):
    root = tmp_path / "in" / "fay"
    root.mkdir(parents=True)
    pts = np.array([[60.0, 70], [110, 70], [85, 100], [65, 125], [105, 125]])
    for i in range(5):
        Image.new("RGB", (80 + i, 80), (i, i, i)).save(root / f"plain{i}.png")
    Image.fromarray(_dot_photo(pts, (200, 170), 5)).save(root / "killer.png")
    m = prepare(tmp_path / "in", tmp_path / "out", workers=2, progress=False, quiet=True,
                detector_factory=crash_on_dots)
    outcomes = {k: e["outcome"] for k, e in m.entries.items()}
    assert outcomes.pop("fay/killer.png") == "error" and set(outcomes.values()) == {"no_face"}
    assert len(_lines(tmp_path / "out" / MANIFEST_NAME)) == 6


def test_aligned_flag_copies_and_resizes(tmp_path):
    root = tmp_path / "in" / "gus"
    root.mkdir(parents=True)
    Image.new("RGB", (224, 224), (10, 200, 30)).save(root / "big.png")
    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "--aligned", "--workers", "1", "--no-progress"]) == 0
    entry = load_manifest(tmp_path / "out" / MANIFEST_NAME)["gus/big.png"]
    assert entry["outcome"] == "already_aligned" and "resized from 224x224" in entry["reason"]
    crop = np.asarray(Image.open(tmp_path / "out" / "gus" / "big.png"))
    assert crop.shape == (112, 112, 3) and (crop == [10, 200, 30]).all()
    np.testing.assert_allclose(transform_points(entry["crops"][0]["transform"], entry["crops"][0]["landmarks"]),
                               TEMPLATE, atol=1e-3)
