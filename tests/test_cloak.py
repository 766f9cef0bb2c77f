"""The cloak tool on synthetic images with a stub detector (fast tier): pixels, formats, metadata, bad input."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from opom.cloak import photofile as pf
from opom.cloak.blend import aligned_change, feather_alpha, retention
from opom.cloak.cli import main
from opom.cloak.mask import MaskMismatch, load_person_mask
from opom.cloak.protect import Protector, ProtectSettings, plan, protect
from opom.cloak.report import read_report
from opom.data.alignment import get_template, invert_affine, similarity_transform, transform_points
from opom.errors import UserError
from opom.masks import ARCFACE_TEMPLATE_112, MaskSet, save_masks

EPS = 8.0
TEMPLATE = get_template("arcface_112")


def face_points(scale=2.2, angle=12.0, offset=(150.0, 90.0)) -> np.ndarray:
    """Where a stub face's 5 landmarks lie in a photo: the template under a similarity."""
    a = np.deg2rad(angle)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return TEMPLATE.array() @ rot.T + np.asarray(offset)


class StubDetector:
    """Returns fixed faces (landmarks in full-resolution coordinates of images of ``size``), or none.

    ``only_width``: find the faces only in images of that width (others have no face)."""

    def __init__(self, faces: list[np.ndarray], size: tuple[int, int] | None = None, only_width: int | None = None):
        self.faces, self.size, self.only_width, self.calls = faces, size, only_width, 0

    def detect(self, rgb):
        self.calls += 1
        if not self.faces or (self.only_width and rgb.shape[1] != self.only_width):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        h, w = rgb.shape[:2]
        sx, sy = (w / self.size[0], h / self.size[1]) if self.size else (1.0, 1.0)
        lms = np.stack([(p + 0.5) * [sx, sy] - 0.5 for p in self.faces])
        boxes = np.stack([np.r_[p.min(0) - 30 * sx, p.max(0) + 30 * sx] for p in lms])
        return boxes, np.full(len(lms), 0.999), lms


def texture(h=360, w=480, seed=0, channels=3) -> np.ndarray:
    g = np.random.default_rng(seed)
    base = g.integers(20, 236, size=(h // 8 + 1, w // 8 + 1, channels)).astype(np.uint8)
    img = np.asarray(Image.fromarray(base.squeeze()).resize((w, h), Image.BILINEAR))
    return np.ascontiguousarray(img)


def make_mask(path: Path, eps=EPS, template="arcface_112", size=112, points=ARCFACE_TEMPLATE_112, seed=0,
              extra=None) -> Path:
    g = torch.Generator().manual_seed(seed)
    masks = (torch.randint(0, 2, (1, 3, size, size), generator=g).float() * 2 - 1) * eps / 255.0
    save_masks(path, MaskSet(masks, ["alice"], "stub", "convex_hull", "fim", eps, image_size=size,
                             template=template, template_points=points, extra=extra or {}))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def mask_file(tmp_path):
    return make_mask(tmp_path / "alice.safetensors")


def protector_for(mask_file, points, size=None, **kw) -> Protector:
    settings = ProtectSettings(choose="largest", **kw)
    return Protector(load_person_mask(mask_file), settings, detector=StubDetector(points, size))


def footprint_mask(points_list, hw) -> np.ndarray:
    """Source pixels whose crop coordinates fall inside the 112x112 crop (a superset test of 'the face region')."""
    ys, xs = np.mgrid[0:hw[0], 0:hw[1]]
    inside = np.zeros(hw, bool)
    for p in points_list:
        m = similarity_transform(p, TEMPLATE.array())
        c = transform_points(m, np.stack([xs.ravel(), ys.ravel()], 1)).reshape(*hw, 2)
        inside |= (c[..., 0] > -1.5) & (c[..., 0] < 112.5) & (c[..., 1] > -1.5) & (c[..., 1] < 112.5)
    return inside


# ------------------------------------------------------------------------------------------ pixels


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_maps_match_pillow(orientation):
    stored = texture(30, 40, seed=orientation)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif.tobytes())
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    assert np.array_equal(pf.to_display(stored, orientation), shown)
    assert np.array_equal(pf.to_stored(shown, orientation), stored)


def test_png_mask_within_eps_and_outside_untouched(tmp_path, mask_file):
    rgb = texture()
    src = tmp_path / "in" / "photo.png"
    src.parent.mkdir()
    Image.fromarray(rgb).save(src)
    before = sha(src)
    faces = [face_points(), face_points(1.5, -20, (350, 200))]
    prot = Protector(load_person_mask(mask_file), ProtectSettings(choose="all"), detector=StubDetector(faces))
    out = tmp_path / "out" / "photo.png"
    entry = prot.protect_photo(src, out)
    assert entry["outcome"] == "protected", entry
    assert sha(src) == before
    got = np.asarray(Image.open(out))
    assert got.shape == rgb.shape and got.dtype == np.uint8
    region = footprint_mask(faces, rgb.shape[:2])
    assert np.array_equal(got[~region], rgb[~region])  # bit-identical outside the face regions
    assert (got[region] != rgb[region]).mean() > 0.5
    for p, rec in zip(faces, entry["protected_faces"], strict=True):
        change = aligned_change(rgb, got, p, TEMPLATE)
        assert np.abs(change).max() <= EPS + 1
        assert rec["aligned_max_change"] == np.abs(change).max()
        assert rec["retention"] > 0.6  # the mask pattern arrives, not just some noise
    assert np.allclose(entry["protected_faces"][0]["transform"], similarity_transform(faces[0], TEMPLATE.array()),
                       atol=1e-5)


def test_feathered_edge_and_overlap_never_exceed_eps():
    alpha = feather_alpha(112, 112, 6)
    assert alpha[56, 56] == 1 and 0 < alpha[0, 56] < 0.2 and alpha.min() >= 0
    from opom.cloak.blend import combine, face_field

    delta = np.full((112, 112, 3), EPS, np.float32)
    m1 = similarity_transform(face_points(), TEMPLATE.array())
    m2 = similarity_transform(face_points(offset=(170.0, 100.0)), TEMPLATE.array())
    combined = combine([face_field(m, delta, (360, 480)) for m in (m1, m2)])
    assert combined.delta.max() <= EPS + 1e-4 and combined.footprint.any()
    assert combined.delta.shape[:2] == combined.footprint.shape == (combined.y1 - combined.y0,
                                                                    combined.x1 - combined.x0)
    assert combined.delta.shape[0] < 360 and combined.delta.shape[1] < 480  # the faces' region only
    assert face_field(m1, delta, (360, 480)).delta.max() <= EPS + 1e-4
    # a face far outside the image gives no field
    far = np.array(m1, copy=True)
    far[:, 2] = invert_affine(m1)[:, 2] * 0 + 1e5
    assert face_field(far, delta, (360, 480)) is None


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_grey_alpha_and_16_bit_keep_their_mode(tmp_path, mask_file, mode):
    rgb = texture()
    if mode == "L":
        arr = rgb[..., 1]
    elif mode == "RGBA":
        arr = np.dstack([rgb, texture(seed=3)[..., 0]])
    else:
        arr = rgb[..., 0].astype(np.uint16) * 257 + 3
    src = tmp_path / "p.png"
    Image.fromarray(arr).save(src)
    assert Image.open(src).mode == mode
    out = tmp_path / "p_protected.png"
    entry = protector_for(mask_file, [face_points()]).protect_photo(src, out)
    assert entry["outcome"] == "protected", entry
    got = pf.load_stored(out).pixels
    assert got.shape == arr.shape and got.dtype == arr.dtype
    if mode == "RGBA":
        assert np.array_equal(got[..., 3], arr[..., 3])  # alpha untouched
    levels = 257 if mode == "I;16" else 1
    diff = np.abs(got.astype(np.int64) - arr.astype(np.int64))
    assert diff.max() <= (EPS + 0.5) * levels + 0.5 and diff.max() >= (EPS - 1) * levels


def test_jpeg_keeps_orientation_icc_exif_and_can_strip_location(tmp_path, mask_file):
    from PIL import ImageCms

    stored = texture(480, 360)  # stored portrait; orientation 6 shows it as 480 wide x 360 high
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"
    gps = exif.get_ifd(0x8825)
    gps[2] = (52.0, 31.0, 12.0)
    gps[1] = "N"
    src = tmp_path / "cam.jpg"
    img.save(src, "JPEG", quality=92, exif=exif, icc_profile=icc)
    before = sha(src)
    face = face_points()  # in the upright (displayed) view, 480 x 360
    for strip, name in ((False, "keep.jpg"), (True, "strip.jpg")):
        out = tmp_path / name
        prot = protector_for(mask_file, [face], strip_location=strip)
        entry = prot.protect_photo(src, out)
        assert entry["outcome"] == "protected", entry
        assert entry["quality"] in (95, 97, 99, 100) and entry["survival"] >= 0.98
        with Image.open(out) as got:
            assert got.format == "JPEG" and got.size == (360, 480)  # stored size and orientation kept
            assert got.info.get("icc_profile") == icc
            ex = got.getexif()
            assert ex.get(0x0112) == 6 and ex.get(0x010F) == "TestCam"
            assert bool(ex.get_ifd(0x8825)) is not strip
        shown_before = np.asarray(ImageOps.exif_transpose(Image.open(src)))  # as viewers show them
        shown_after = np.asarray(ImageOps.exif_transpose(Image.open(out)))
        change = aligned_change(shown_before, shown_after, face, TEMPLATE)
        assert retention(change, prot.intended) > 0.6  # the mask pattern lies on the face of the upright view
        assert entry["protected_faces"][0]["retention"] == pytest.approx(retention(change, prot.intended), abs=0.02)
    assert sha(src) == before


# ------------------------------------------------------------------------------------------ outputs


def test_plan_never_writes_onto_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(texture(40, 40)).save(tmp_path / "a" / "x.png")
    Image.fromarray(texture(40, 40)).save(tmp_path / "a" / "x_protected.png")  # an earlier output: not walked
    (tmp_path / "a" / "notes.txt").write_text("hi")  # a job: its content decides (not_an_image), and it is named
    jobs, skipped = plan([tmp_path / "a"], None)
    assert [j.output.name for j in jobs] == ["notes_protected.txt", "x_protected.png"]
    assert [(Path(s.path).name, s.outcome) for s in skipped] == [("x_protected.png", "ignored")]
    assert "earlier protect output" in skipped[0].reason
    with pytest.raises(UserError, match="never overwritten"):
        plan([tmp_path / "a"], tmp_path / "a")
    with pytest.raises(UserError, match="never overwritten"):
        plan([tmp_path / "a" / "x.png"], tmp_path / "a")
    with pytest.raises(UserError, match="does not exist"):
        plan([tmp_path / "missing.jpg"], None)
    with pytest.raises(UserError, match="suffix"):
        ProtectSettings(suffix="").validate()


def test_protect_run_report_existing_outputs_and_bad_files(tmp_path, mask_file):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(texture()).save(folder / "good.png")
    (folder / "text.jpg").write_text("not an image")
    (folder / "cut.jpg").write_bytes((lambda b: b.getvalue()[:300])(_jpeg(texture())))
    Image.fromarray(texture(200, 300, seed=5)).save(folder / "empty.png")  # the stub finds no face in it
    originals = {p.name: sha(p) for p in folder.iterdir()}
    stub = StubDetector([face_points()], only_width=480)
    out = tmp_path / "out"
    person = load_person_mask(mask_file)
    settings = ProtectSettings(choose="largest")
    entries = protect([folder], person, out=out, settings=settings, detector=stub, progress=False, quiet=True)
    again = protect([folder], person, out=out, settings=settings, detector=stub, progress=False, quiet=True)
    outcomes = {Path(e["source"]).name: e["outcome"] for e in entries}
    assert outcomes == {"good.png": "protected", "text.jpg": "not_an_image", "cut.jpg": "unreadable",
                        "empty.png": "no_face"}
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "opom_protect_report.jsonl"]
    # a second run resumes: the finished copy is "done" (success), the rest is tried again
    assert {Path(e["source"]).name: e["outcome"] for e in again}["good.png"] == "done"
    report = read_report(out / "opom_protect_report.jsonl")
    assert len(report) == 8 and all(e["mask"]["identity"] == "alice" for e in report)
    # a file at the output's name that this run did not write is kept, and named
    Image.fromarray(texture(20, 20)).save(out / "good.png")
    third = protect([folder / "good.png"], person, out=out, settings=settings, detector=stub, progress=False,
                    quiet=True)
    assert third[0]["outcome"] == "exists" and "--overwrite" in third[0]["reason"]
    good = next(e for e in report if e["outcome"] == "protected")
    assert good["n_faces"] == 1 and good["chosen"] == [0] and good["protected_faces"][0]["aligned_max_change"] <= 9
    assert {p.name: sha(p) for p in folder.iterdir()} == originals


def _jpeg(rgb) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    return buf


# ------------------------------------------------------------------------------------------ masks


def test_mask_from_another_template_or_size_is_refused(tmp_path):
    other = make_mask(tmp_path / "sphere.safetensors", template="sphereface_96x112")
    with pytest.raises(MaskMismatch, match="sphereface_96x112.*arcface_112"):  # asked for another template
        load_person_mask(other, template="arcface_112")
    with pytest.raises(MaskMismatch, match="112x112.*96x112"):  # its own template: a 112x112 mask cannot be it
        load_person_mask(other)
    small = make_mask(tmp_path / "small.safetensors", size=96)
    with pytest.raises(MaskMismatch, match="96x96"):
        load_person_mask(small)
    moved = make_mask(tmp_path / "moved.safetensors", points=tuple((x + 3, y) for x, y in ARCFACE_TEMPLATE_112))
    with pytest.raises(MaskMismatch, match="landmark positions"):
        load_person_mask(moved)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a readable opom mask"):
        load_person_mask(tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="opom enroll"):
        load_person_mask(tmp_path / "nope.safetensors")


def test_match_needs_an_enrolment_embedding(tmp_path, mask_file):
    with pytest.raises(UserError, match="--choose largest"):
        Protector(load_person_mask(mask_file), ProtectSettings(choose="match"), detector=StubDetector([]))


def test_cli_bad_mask_is_one_line_and_harms_nothing(tmp_path, capsys):
    src = tmp_path / "p.png"
    Image.fromarray(texture()).save(src)
    before = sha(src)
    other = make_mask(tmp_path / "m.safetensors", template="sphereface_96x112")
    assert main(["protect", str(src), "--mask", str(other), "--choose", "largest", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--template sphereface_96x112" in err[0]
    good = make_mask(tmp_path / "masks" / "ok.safetensors")
    assert main(["protect", str(src), "--mask", str(good), "--choose", "largest", "--out", str(tmp_path)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert sha(src) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "masks", "p.png"]


def test_report_lines_are_json(tmp_path, mask_file):
    src = tmp_path / "p.png"
    Image.fromarray(texture()).save(src)
    entries = protect([src], mask_file, settings=ProtectSettings(choose="largest"),
                      detector=StubDetector([face_points()]), progress=False, quiet=True)
    lines = (tmp_path / "opom_protect_report.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["output"] == str(tmp_path / "p_protected.png")
    assert entries[0]["outcome"] == "protected" and (tmp_path / "p_protected.png").is_file()
