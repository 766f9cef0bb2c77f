"""The held-out-photo protocol: the rates it reports, padding of folds, and the sweep's transfer matrix."""

import json

import torch
from torch import nn

from opom.data.alignment import Canvas
from opom.data.real_photos import HoldoutFold, HoldoutSet
from opom.evaluation.holdout import evaluate_holdout, holdout_quality, transfer_rows, write_transfer_matrix
from opom.models.zoo import FaceModel, Preprocessing


class MeanColour(nn.Module):
    """Embedding = mean colour of the image (input in 0..255 after preprocessing): people are colours."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def _faces(colours):
    return torch.stack([torch.tensor(c, dtype=torch.uint8)[:, None, None].expand(3, 112, 112) for c in colours])


def _set():
    # person a: 3 photos of one colour; person b: 2 photos; two distractors
    colours = [(200, 40, 40), (202, 42, 40), (198, 40, 42), (40, 40, 200), (42, 40, 198), (40, 200, 40),
               (120, 120, 120)]
    people = ["a", "a", "a", "b", "b", None, None]
    folds = [HoldoutFold("a/0", "a", 0, (1, 2)), HoldoutFold("a/1", "a", 1, (0, 2)), HoldoutFold("a/2", "a", 2, (0, 1)),
             HoldoutFold("b/3", "b", 3, (4,)), HoldoutFold("b/4", "b", 4, (3,))]
    return HoldoutSet([f"f{i}" for i in range(7)], _faces(colours), people, folds, Canvas())


def test_folds_pad_their_enrolment_photos_cyclically():
    data = _set()
    assert data.names == ["a/0", "a/1", "a/2", "b/3", "b/4"] and data.num_identities == 5
    m = data.mask_images
    assert m.shape == (5, 2, 3, 112, 112)
    assert torch.equal(m[3, 0], data.images[4]) and torch.equal(m[3, 1], data.images[4])  # one photo, repeated
    assert torch.equal(data.probes[1], data.images[1])


def test_rates_follow_the_models_own_rule():
    data = _set()
    model = FaceModel(MeanColour(), Preprocessing(mean=0.0, std=1.0, embedding_size=3, threshold=0.99))
    none = torch.zeros(5, 3, 112, 112)
    clean = evaluate_holdout(model, data, none)
    assert clean["clean_match_rate"] == 1.0 and clean["protected_rate"] == 0.0 and clean["clean_rank1"] == 1.0
    # masks that turn a's held-out photos grey (far from red) and leave b's alone
    masks = none.clone()
    masks[:3, 1:] = 80 / 255
    r = evaluate_holdout(model, data, masks)
    assert r["protected_rate"] == 0.6 and r["rank1_protected_rate"] == 0.6  # 3 of 5 folds
    assert r["folds"]["a/0"]["protected_match"] is False and r["folds"]["b/3"]["protected_match"] is True
    # the L2 rule: distance in 0..255 colour units
    l2 = FaceModel(MeanColour(), Preprocessing(mean=0.0, std=1.0, embedding_size=3, threshold=10.0, rule="l2"))
    assert evaluate_holdout(l2, data, masks)["protected_rate"] == 0.6


def test_image_quality_of_the_held_out_photos_covers_the_face_region():
    data = _set()
    masks = torch.zeros(5, 3, 112, 112)
    masks[..., :10, :] = 8 / 255  # changes only the top rows
    q = holdout_quality(data, masks)
    assert q["psnr_db"] < 100 and q["face_psnr_db"] == q["psnr_db"]  # the canonical canvas is all face region


def test_transfer_matrix_from_a_sweep(tmp_path):
    for i, (sur, held) in enumerate([("faceres+faceapi", True), ("sface+faceapi", False)]):
        job = tmp_path / f"job{i}"
        job.mkdir()
        res = {"protocol": "holdout", "method": "convex_hull", "attack": "fim", "surrogate": sur, "eps": 8.0,
               "folds": 7, "photos": 30, "seconds_per_fold": 1.5,
               "image_quality": {"psnr_db": 38.0, "ssim": 0.95, "face_psnr_db": 36.5, "face_ssim": 0.93},
               "models": {"sface": {"family": "sface", "whitebox": not held, "held_out": held, "protected_rate": 0.43,
                                    "rank1_protected_rate": 0.29, "clean_match_rate": 1.0, "clean_rank1": 1.0}}}
        (job / "results.json").write_text(json.dumps(res))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps({"models": {}}))  # not a held-out job
    rows = write_transfer_matrix(tmp_path)
    assert [r["surrogates"] for r in rows] == ["faceres+faceapi", "sface+faceapi"] == [
        r["surrogates"] for r in transfer_rows(tmp_path)]
    header = (tmp_path / "transfer_matrix.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["surrogates", "target", "target_family", "held_out"]
    assert {"eps", "photos", "protected_rate", "rank1_protected_rate", "psnr_db", "ssim"} <= set(header)
    md = (tmp_path / "transfer_matrix.md").read_text()
    assert "faceres+faceapi" in md and "sface+faceapi" not in md  # only held-out families in the table
    assert (tmp_path / "transfer_matrix.png").stat().st_size > 10_000
