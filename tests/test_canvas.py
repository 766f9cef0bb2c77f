"""Aligned canvases and model crops: geometry, exactness against OpenCV, and one input contract for every model."""

import cv2
import numpy as np
import pytest
import torch
from helpers import TinyNet

from opom.data.alignment import CANVASES, Canvas, get_template, transform_points, warp_to_template
from opom.masks import ARCFACE_TEMPLATE_112
from opom.models.crops import DLIB_CHIP_150, compose, crop_matrix
from opom.models.zoo import FaceModel, Preprocessing, warp_affine


def _smooth(size, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((size, size, 3)) * 255).astype(np.float32), (0, 0), 2)


def test_canvas_geometry():
    c = Canvas(56, 1)
    assert c.size == 224 and c.face_box() == (56, 56, 168, 168) and c.name == "canvas224"
    assert Canvas().is_canonical and Canvas().name == "arcface_112" and Canvas(56, 2).size == 448
    points = np.asarray(get_template("canvas224").points)
    assert np.allclose(points, np.asarray(ARCFACE_TEMPLATE_112) + 56)
    assert set(CANVASES) >= {"arcface_112", "canvas224"}


def test_a_canvas_holds_the_canonical_crop_at_its_centre():
    """Aligning a photo onto canvas224 and cutting its centre gives the 112 crop of the same alignment."""
    rng = np.random.default_rng(1)
    photo = cv2.GaussianBlur((rng.random((400, 380, 3)) * 255).astype(np.uint8), (0, 0), 3)
    landmarks = np.asarray(ARCFACE_TEMPLATE_112) * 1.2 + [90, 80]  # no area pre-shrinking: same samples
    crop, _ = warp_to_template(photo, landmarks, "arcface_112")
    canvas, _ = warp_to_template(photo, landmarks, "canvas224")
    diff = np.abs(canvas[56:168, 56:168].astype(int) - crop.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.1  # OpenCV's warp rounds coordinates to 1/32 px


def test_warp_affine_equals_opencv_and_has_gradients():
    img = _smooth(224)
    m = compose(DLIB_CHIP_150, np.linalg.inv(np.vstack([Canvas(56).from_canonical(), [0, 0, 1]]))[:2])
    expected = cv2.warpAffine(img, m, (150, 150), flags=cv2.INTER_LINEAR)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].requires_grad_(True)
    got = warp_affine(x, m, 150)
    assert np.abs(got[0].detach().permute(1, 2, 0).numpy() - expected)[2:-2, 2:-2].max() < 1e-2
    got.sum().backward()
    assert x.grad.abs().sum() > 0


def test_crops_put_the_template_where_the_model_expects_it():
    pts = np.asarray(ARCFACE_TEMPLATE_112)
    assert np.allclose(transform_points(crop_matrix("arcface_112", 112), pts), pts)
    resized = transform_points(crop_matrix("resize", 160), pts)
    assert np.allclose(resized, (pts + 0.5) * 160 / 112 - 0.5)  # as cv2.resize maps pixel centres
    chip = transform_points(crop_matrix("dlib_chip", 150), pts)
    assert (chip > 0).all() and (chip < 150).all()
    with pytest.raises(Exception, match="112x112"):
        crop_matrix("arcface_112", 160)


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = TinyNet(size=112)

    def forward(self, x):
        self.seen = x.detach()
        return self.net(x)


def test_a_model_reads_the_same_input_from_a_canvas_as_from_the_crop():
    canvas = torch.from_numpy(_smooth(224)).permute(2, 0, 1)[None] / 255
    on_crop = FaceModel(_Recorder(), Preprocessing(embedding_size=6))
    on_canvas = FaceModel(_Recorder(), Preprocessing(embedding_size=6), canvas=Canvas(56, 1))
    a, b = on_crop(canvas[..., 56:168, 56:168]), on_canvas(canvas)
    assert torch.allclose(on_crop.backbone.seen, on_canvas.backbone.seen, atol=1e-4)
    assert torch.allclose(a, b, atol=1e-4)


def test_per_channel_means_and_bgr_follow_the_network_order():
    rec = _Recorder()
    model = FaceModel(rec, Preprocessing(channels="BGR", mean=(10.0, 20.0, 30.0), std=1.0))
    x = torch.zeros(1, 3, 112, 112)
    x[:, 0] = 1.0  # red
    model(x)
    # BGR order: channel 2 is red (255 - 30), channels 0 and 1 are 0 minus their means
    assert rec.seen[0, :, 0, 0].tolist() == [-10.0, -20.0, 225.0]


def test_same_person_rules():
    cos = Preprocessing(threshold=0.5)
    l2 = Preprocessing(threshold=0.6, rule="l2")
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    assert cos.same_person(a, b).tolist() == [True, False]
    assert l2.same_person(a, torch.tensor([[1.0, 0.5], [1.0, 0.7]])).tolist() == [True, False]
    with pytest.raises(Exception, match="rule"):
        Preprocessing(rule="dot")
