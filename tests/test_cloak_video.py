"""Video protection and enrolment on synthetic input (fast tier): tracks, smoothing, audio kept, mask crafting."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_cloak import EPS, face_points, make_mask, texture
from torch import nn

from opom.cloak.enroll import EnrollSettings, enroll
from opom.cloak.faces import Face
from opom.cloak.mask import load_person_mask
from opom.cloak.protect import Protector, ProtectSettings
from opom.cloak.video import Tracker, fill_and_smooth, gaussian_smooth, jitter, pan_zoom_clip, protect_video
from opom.errors import UserError
from opom.masks import load_masks

av = pytest.importorskip("av")
ROOT = Path(__file__).resolve().parents[1]


def _face(points: np.ndarray) -> Face:
    return Face(np.r_[points.min(0) - 20, points.max(0) + 20], 0.99, points)


def test_gaussian_smoothing_keeps_constants_and_removes_jitter():
    flat = np.ones((20, 10)) * 3.0
    assert np.allclose(gaussian_smooth(flat, 2.0), flat)
    ramp = np.linspace(0, 10, 30)[:, None]
    assert np.allclose(gaussian_smooth(ramp, 1.5)[5:-5], ramp[5:-5])  # no lag on steady motion
    noisy = ramp + np.random.default_rng(0).normal(0, 1, ramp.shape)
    assert np.abs(gaussian_smooth(noisy, 1.5) - ramp).mean() < 0.6 * np.abs(noisy - ramp).mean()


def test_tracker_follows_two_faces_and_fills_gaps():
    tracker = Tracker(max_gap=4)
    rng = np.random.default_rng(1)
    for i in range(0, 20, 2):  # detect every other frame
        a = face_points(1.0, 0, (20 + i, 30)) + rng.normal(0, 0.8, (5, 2))
        b = face_points(1.0, 0, (250 - i, 60)) + rng.normal(0, 0.8, (5, 2))
        faces = [_face(b), _face(a)] if i % 4 else [_face(a), _face(b)]
        tracker.update(i, faces)
    assert len(tracker.tracks) == 2
    for t in tracker.tracks:
        assert len(t.detections) == 10
        raw = [t.detections[i].landmarks for i in sorted(t.detections)]
        fill_and_smooth(t, 20, sigma=1.5, hold=1)
        assert sorted(t.landmarks) == list(range(20))  # every frame, the odd ones interpolated, one held at the end
        assert jitter([t.landmarks[i] for i in sorted(t.detections)]) < 0.5 * jitter(raw)


class CountingStub:
    """A detector for the synthetic clip: one face drifting right, with detector-like landmark noise."""

    def __init__(self, size):
        self.size, self.calls, self.rng = size, 0, np.random.default_rng(0)

    def detect(self, rgb):
        i = self.calls
        self.calls += 1
        p = face_points(0.9, 5, (90 + 1.5 * i, 40)) + self.rng.normal(0, 0.7, (5, 2))
        return np.r_[p.min(0) - 20, p.max(0) + 20][None], np.array([0.999]), p[None]


def test_video_keeps_frames_size_rate_and_audio(tmp_path):
    src = pan_zoom_clip(texture(300, 400), tmp_path / "clip.mp4", frames=14, size=(256, 192), fps=10)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    mask = make_mask(tmp_path / "m.safetensors")
    prot = Protector(load_person_mask(mask), ProtectSettings(choose="largest", preset="ultrafast"),
                     detector=CountingStub((256, 192)))
    out = tmp_path / "out" / "clip.mp4"
    entry = protect_video(prot, src, out, progress=False)
    assert entry["outcome"] == "protected", entry
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert entry["frames"] == 14 and entry["n_tracks"] == 1 and entry["audio_streams"] == 1
    assert entry["landmark_jitter_px"]["smoothed"] < 0.5 * entry["landmark_jitter_px"]["detected"]
    assert entry["retention"] > 0.5
    with av.open(str(src)) as a, av.open(str(out)) as b:
        va, vb = a.streams.video[0], b.streams.video[0]
        assert (vb.codec_context.width, vb.codec_context.height) == (256, 192)
        assert vb.average_rate == va.average_rate
        assert b.streams.audio and b.streams.audio[0].codec_context.name == "aac"
        fa = [f.to_ndarray(format="rgb24") for f in a.decode(va)]
        fb = [f.to_ndarray(format="rgb24") for f in b.decode(vb)]
        assert len(fb) == len(fa) == 14
        assert abs(float(b.duration) - float(a.duration)) / 1e6 < 0.15
    with av.open(str(src)) as a, av.open(str(out)) as b:
        pa = sum(1 for p in a.demux(a.streams.audio[0]) if p.size)
        pb = sum(1 for p in b.demux(b.streams.audio[0]) if p.size)
        assert pa == pb  # audio copied packet for packet
    # the face region changes by about the mask, the rest only by re-encoding
    far = np.abs(fb[0][:, -40:].astype(int) - fa[0][:, -40:]).mean()
    face = np.abs(fb[0][60:120, 100:160].astype(int) - fa[0][60:120, 100:160]).mean()
    assert face > 2 * far


def test_video_without_faces_or_corrupt(tmp_path):
    src = pan_zoom_clip(texture(300, 400), tmp_path / "clip.mp4", frames=4, size=(128, 96), audio=False)
    mask = make_mask(tmp_path / "m.safetensors")

    class NoFace:
        def detect(self, rgb):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))

    prot = Protector(load_person_mask(mask), ProtectSettings(choose="largest"), detector=NoFace())
    assert protect_video(prot, src, tmp_path / "o.mp4", progress=False)["outcome"] == "no_face"
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    entry = protect_video(prot, bad, tmp_path / "o2.mp4", progress=False)
    assert entry["outcome"] in ("not_an_image", "unreadable") and entry["reason"]
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o2.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "clip.mp4", "m.safetensors"]  # no temp left


# ------------------------------------------------------------------------------------------ enroll


class TinyEmbedder(nn.Module):
    """A fixed random conv embedder on 112x112 crops (stands in for a face model)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.fc = nn.Linear(8 * 27 * 27, 16)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.05

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def test_enroll_crafts_a_self_describing_mask(tmp_path):
    folder = tmp_path / "alice"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(texture(112, 112, seed=10 + k)).save(folder / f"{k}.png")  # aligned crops already
    (folder / "notes.txt").write_text("ignored: not a photo suffix")
    out = tmp_path / "alice.safetensors"
    settings = EnrollSettings(strength="paper", iterations=6, method_options={"warmup": 2})
    result = enroll([folder], out, settings=settings, surrogate=TinyEmbedder(), threshold=0.5, progress=False,
                    quiet=True)
    ms = load_masks(out)
    assert ms.identities == ["alice"] and ms.template == "arcface_112" and ms.image_size == 112
    assert ms.method == "convex_hull" and ms.attack == "fim" and ms.eps == EPS
    assert 0 < ms.masks.abs().max() <= EPS / 255 + 1e-6
    assert ms.extra["enroll"]["photos"] == 3 and "match" not in ms.extra  # a custom model cannot be rebuilt later
    wb = result.whitebox
    assert wb["protected_mean"] < wb["clean_mean"]  # the mask moves the faces away from the person
    assert result.preview is not None and result.preview.is_file()
    load_person_mask(out)  # protect accepts it
    with pytest.raises(Exception, match="exists"):
        enroll([folder], out, settings=settings, surrogate=TinyEmbedder(), threshold=0.5, progress=False, quiet=True)


def test_enroll_paper_strength_is_the_framework_configs():
    fim = OmegaConf.load(ROOT / "conf" / "attack" / "fim.yaml")
    hull = OmegaConf.load(ROOT / "conf" / "method" / "convex_hull.yaml")
    s = EnrollSettings(strength="paper").validate()
    assert (s.method, s.attack, s.eps, s.surrogate, s.iterations) == ("convex_hull", "fim", fim.eps, "sface",
                                                                      fim.iterations)
    assert (s.canvas, s.region, s.transforms) == ("arcface_112", "full", ())
    from opom.attack import FIM
    from opom.methods import ConvexHull

    attack, method = FIM(), ConvexHull()
    assert (attack.iterations, attack.step_levels, attack.random_start) == (fim.iterations, fim.step,
                                                                            fim.random_start)
    assert (method.lower, method.upper, method.warmup) == (hull.lower, hull.upper, hull.warmup)


def test_enroll_strength_presets_and_explicit_settings():
    from opom.cloak.strength import DEFAULT_STRENGTH, STRENGTHS

    s = EnrollSettings().validate()
    assert s.strength == DEFAULT_STRENGTH and s.surrogate == STRENGTHS[DEFAULT_STRENGTH]["surrogate"]
    mine = EnrollSettings(strength="strong", eps=6.0, surrogate="sface", transforms=()).validate()
    assert (mine.eps, mine.surrogates, mine.transforms) == (6.0, ["sface"], ())  # what is given wins
    assert mine.canvas == STRENGTHS["strong"]["canvas"]  # the rest comes from the preset
    with pytest.raises(UserError, match="unknown strength"):
        EnrollSettings(strength="max").validate()


def test_enroll_states_the_measured_expectation_only_for_an_unchanged_preset():
    from opom.cloak.enroll import expectation
    from opom.cloak.strength import EXPECTED, STRENGTHS

    assert set(EXPECTED) == set(STRENGTHS)  # every preset has its measured figures
    preset = STRENGTHS["strong"]
    same = EnrollSettings(strength="strong", eps=preset["eps"], surrogate=preset["surrogate"].replace(",", ", "))
    assert same.validate().changed == ()  # giving the preset's own values changes nothing
    assert EXPECTED["strong"] in expectation({"strength": "strong", "changed": []})
    changed = EnrollSettings(strength="strong", eps=preset["eps"] + 2, attack="dfanet_mi").validate().changed
    assert changed == ("eps", "attack")
    words = expectation({"strength": "strong", "changed": list(changed)})
    assert "not measured (eps, attack changed" in words and EXPECTED["strong"] not in words



def test_a_second_run_keeps_the_finished_video(tmp_path):
    from opom.cloak.protect import protect

    (tmp_path / "in").mkdir()
    src = pan_zoom_clip(texture(300, 400), tmp_path / "in" / "clip.mp4", frames=6, size=(128, 96), fps=10,
                        audio=False)
    mask = make_mask(tmp_path / "m.safetensors")
    settings = ProtectSettings(choose="largest", preset="ultrafast")
    first = protect([src], mask, out=tmp_path / "out", settings=settings, detector=CountingStub((128, 96)),
                    progress=False, quiet=True)
    again = protect([src], mask, out=tmp_path / "out", settings=settings, detector=CountingStub((128, 96)),
                    progress=False, quiet=True)
    assert [e["outcome"] for e in first] == ["protected"] and [e["outcome"] for e in again] == ["done"]
