"""Tests for opom.subspace against cvxpy (the reference implementation's solver)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

cp = pytest.importorskip("cvxpy")

from opom.subspace import (  # noqa: E402
    class_center,
    convex_hull_weights,
    project_affine,
    project_convex,
)

DIST_TOL = 1e-6


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _data(seed: int, b: int, m: int, n: int, d: int, kind: str = "random"):
    """float64 anchors (b, n, d) and points (b, m, d), L2-normalised rows.

    kind: "random" (nearly orthogonal anchors), "clustered" (face-like: the
    anchors of one identity are close to each other), "far" (points scaled by
    50, far outside the hull).
    """
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    if kind == "clustered":
        center = _normalize(torch.randn(b, 1, d, generator=g, dtype=dt))
        noise = 1.2 / d**0.5
        anchors = _normalize(center + noise * torch.randn(b, n, d, generator=g, dtype=dt))
        points = _normalize(center + 1.5 * noise * torch.randn(b, m, d, generator=g, dtype=dt))
    else:
        anchors = _normalize(torch.randn(b, n, d, generator=g, dtype=dt))
        points = _normalize(torch.randn(b, m, d, generator=g, dtype=dt))
    if kind == "far":
        points = 50.0 * points
    return anchors, points


@functools.cache
def _cvx_problem(n: int, d: int, lower, upper):
    """Parametrised (compiled once) cvxpy problem for the distance from a point
    to {w @ C : sum w = 1, lower <= w <= upper}; lower = upper = None: affine.

    The objective is the norm itself (not its square), so that the solver's
    tolerance applies to the distance.
    """
    a = cp.Parameter(d)
    c = cp.Parameter((n, d))
    w = cp.Variable(n)
    cons = [cp.sum(w) == 1]
    if lower is not None:
        cons += [w >= lower, w <= upper]
    return cp.Problem(cp.Minimize(cp.norm(a - c.T @ w)), cons), a, c


def _cvx_distance(a, c, lower=None, upper=None) -> float:
    """Distance from a (D,) to the (affine / reduced convex) hull of c (N, D)."""
    prob, a_par, c_par = _cvx_problem(c.shape[0], c.shape[1], lower, upper)
    a_par.value = np.asarray(a, dtype=np.float64)
    c_par.value = np.asarray(c, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
    return float(prob.value)


def _max_error_vs_cvxpy(points, anchors, proj, lower=None, upper=None) -> float:
    dist = (points - proj).norm(dim=-1)
    err = 0.0
    for b in range(points.shape[0]):
        for m in range(points.shape[1]):
            ref = _cvx_distance(points[b, m].numpy(), anchors[b].numpy(), lower, upper)
            err = max(err, abs(ref - float(dist[b, m])))
    return err


def _assert_feasible(w: torch.Tensor, lower: float, upper: float) -> None:
    assert torch.all((w.sum(dim=-1) - 1.0).abs() <= 1e-9)
    assert float(w.min()) >= lower - 1e-12
    assert float(w.max()) <= upper + 1e-12


# --------------------------------------------------------------------------- #
# convex hull
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("kind", "n", "d", "seed"),
    [
        ("random", 10, 128, 0),
        ("clustered", 10, 128, 1),
        ("far", 10, 32, 2),
        ("clustered", 30, 64, 3),
    ],
)
def test_convex_hull_matches_cvxpy(kind, n, d, seed):
    anchors, points = _data(seed, 2, 4, n, d, kind)
    w = convex_hull_weights(points, anchors)
    _assert_feasible(w, 0.0, 1.0)
    proj = project_convex(points, anchors)
    torch.testing.assert_close(proj, w @ anchors, rtol=0, atol=1e-12)
    assert _max_error_vs_cvxpy(points, anchors, proj, 0.0, 1.0) < DIST_TOL


@pytest.mark.parametrize(
    ("lower", "upper", "n", "d", "kind", "seed"),
    [
        (0.0, 0.3, 10, 128, "random", 10),
        (0.0, 0.3, 10, 128, "clustered", 11),
        (0.05, 1.0, 10, 128, "clustered", 12),
        (0.02, 0.2, 10, 32, "far", 13),
        (0.0, 0.1, 30, 64, "clustered", 14),  # N > 24: sort-based simplex projection
        (0.01, 0.06, 30, 16, "random", 15),
    ],
)
def test_reduced_hull_matches_cvxpy(lower, upper, n, d, kind, seed):
    anchors, points = _data(seed, 2, 4, n, d, kind)
    w = convex_hull_weights(points, anchors, lower, upper)
    _assert_feasible(w, lower, upper)
    proj = w @ anchors
    assert _max_error_vs_cvxpy(points, anchors, proj, lower, upper) < DIST_TOL


@pytest.mark.parametrize(
    ("lower", "upper", "n", "d", "seed"),
    [
        (0.0, 1.0, 10, 128, 20),
        (0.0, 1.0, 10, 4, 21),  # N > D: the hull is full-dimensional, w not unique
        (0.0, 1.0, 30, 16, 22),
        (0.0, 0.3, 10, 4, 23),
        (0.05, 0.2, 10, 32, 24),
    ],
)
def test_points_inside_hull(lower, upper, n, d, seed):
    anchors, _ = _data(seed, 2, 5, n, d, "clustered")
    g = torch.Generator().manual_seed(seed + 100)
    # feasible weights: mix random simplex weights with the uniform ones
    raw = torch.rand(2, 5, n, generator=g, dtype=torch.float64) ** 3
    raw = raw / raw.sum(dim=-1, keepdim=True)
    # largest mixing factor that keeps every weight within the bounds
    mix = min(1.0, (upper - 1.0 / n) / float(raw.max() - 1.0 / n), (1.0 / n - lower) / float(1.0 / n - raw.min()))
    w_true = 0.95 * mix * raw + (1.0 - 0.95 * mix) / n
    assert float(w_true.max()) <= upper and float(w_true.min()) >= lower
    points = w_true @ anchors
    proj = project_convex(points, anchors, lower, upper)
    dist = (points - proj).norm(dim=-1)
    assert float(dist.max()) < 1e-7
    # idempotent
    torch.testing.assert_close(project_convex(proj, anchors, lower, upper), proj, rtol=0, atol=1e-7)
    assert _max_error_vs_cvxpy(points[:1, :3], anchors[:1], proj[:1, :3], lower, upper) < DIST_TOL


@pytest.mark.parametrize(
    ("lower", "upper", "n", "d", "seed"),
    [
        (0.0, 1.0, 10, 32, 30),
        (0.0, 1.0, 10, 4, 31),
        (0.0, 0.3, 10, 32, 32),
        (0.02, 0.25, 10, 4, 33),
    ],
)
def test_convex_rank_deficient_anchors(lower, upper, n, d, seed):
    anchors, points = _data(seed, 2, 4, n, d, "clustered")
    anchors[:, n // 2 :] = anchors[:, : n - n // 2]  # every anchor duplicated
    anchors[:, 1] = anchors[:, 0]  # and one of them four times
    w = convex_hull_weights(points, anchors, lower, upper)
    _assert_feasible(w, lower, upper)
    assert _max_error_vs_cvxpy(points, anchors, w @ anchors, lower, upper) < DIST_TOL


def test_near_duplicate_anchors():
    anchors, points = _data(40, 2, 4, 10, 16, "clustered")
    g = torch.Generator().manual_seed(41)
    anchors[:, 5:] = _normalize(anchors[:, :5] + 1e-7 * torch.randn(2, 5, 16, generator=g, dtype=torch.float64))
    proj = project_convex(points, anchors, 0.0, 0.4)
    assert _max_error_vs_cvxpy(points, anchors, proj, 0.0, 0.4) < DIST_TOL


# --------------------------------------------------------------------------- #
# affine hull and class center
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("n", "d", "dup", "seed"),
    [
        (10, 128, False, 50),
        (10, 128, True, 51),  # duplicated anchors
        (10, 4, False, 52),  # N > D: the affine hull is the whole space
        (10, 4, True, 53),
        (6, 32, "collinear", 54),
    ],
)
def test_affine_hull_matches_cvxpy(n, d, dup, seed):
    anchors, points = _data(seed, 2, 4, n, d, "clustered")
    if dup is True:
        anchors[:, n // 2 :] = anchors[:, : n - n // 2]
    elif dup == "collinear":
        t = torch.linspace(-1.0, 2.0, n, dtype=torch.float64).view(1, n, 1)
        anchors = anchors[:, :1] + t * (anchors[:, 1:2] - anchors[:, :1])
    proj = project_affine(points, anchors)
    assert _max_error_vs_cvxpy(points, anchors, proj) < DIST_TOL
    # the projection lies in the hull: it is its own projection, and the
    # residual is orthogonal to every anchor difference
    torch.testing.assert_close(project_affine(proj, anchors), proj, rtol=0, atol=1e-10)
    resid = points - proj
    diffs = anchors - anchors[:, :1]
    assert float((resid @ diffs.transpose(1, 2)).abs().max()) < 1e-10
    if d < n and dup is False:
        torch.testing.assert_close(proj, points, rtol=0, atol=1e-10)


def test_class_center():
    anchors, points = _data(60, 3, 4, 10, 32, "clustered")
    center = class_center(anchors)
    assert center.shape == (3, 32)
    torch.testing.assert_close(center, anchors.mean(dim=1))
    n = anchors.shape[1]
    w = convex_hull_weights(points, anchors, 1.0 / n, 1.0 / n)
    torch.testing.assert_close(w, torch.full_like(w, 1.0 / n), rtol=0, atol=1e-15)
    proj = project_convex(points, anchors, 1.0 / n, 1.0 / n)
    torch.testing.assert_close(proj, center.unsqueeze(1).expand_as(proj), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- #
# batching, shapes, dtypes, validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("lower", "upper"), [(0.0, 1.0), (0.0, 0.3), (0.02, 0.2)])
def test_batched_equals_per_identity(lower, upper):
    anchors, points = _data(70, 6, 5, 10, 32, "clustered")
    anchors[2, 5:] = anchors[2, :5]  # one rank-deficient identity in the batch
    points[4] *= 30.0  # one identity far away
    proj = project_convex(points, anchors, lower, upper)
    aff = project_affine(points, anchors)
    for b in range(anchors.shape[0]):
        one = project_convex(points[b : b + 1], anchors[b : b + 1], lower, upper)
        torch.testing.assert_close(proj[b : b + 1], one, rtol=0, atol=1e-9)
        one_aff = project_affine(points[b : b + 1], anchors[b : b + 1])
        torch.testing.assert_close(aff[b : b + 1], one_aff, rtol=0, atol=1e-12)
    # one point at a time, too (the rank-deficient and the far identity)
    for b, m in [(2, 0), (2, 3), (4, 1), (5, 2)]:
        single = project_convex(points[b : b + 1, m], anchors[b : b + 1], lower, upper)
        torch.testing.assert_close(single[0], proj[b, m], rtol=0, atol=1e-9)


def test_shapes_and_dtypes():
    anchors, points = _data(80, 3, 4, 10, 32, "random")
    a32, p32 = anchors.float(), points.float()
    proj = project_convex(p32, a32, 0.0, 0.5)
    assert proj.dtype == torch.float32 and proj.shape == (3, 4, 32)
    torch.testing.assert_close(proj.double(), project_convex(points, anchors, 0.0, 0.5), rtol=0, atol=1e-5)
    w = convex_hull_weights(p32, a32)
    assert w.dtype == torch.float32 and w.shape == (3, 4, 10)
    # (B, D) points: one point per identity
    w2 = convex_hull_weights(points[:, 0], anchors)
    assert w2.shape == (3, 10)
    _assert_feasible(w2, 0.0, 1.0)
    p2 = project_convex(points[:, 0], anchors)
    assert p2.shape == (3, 32)
    torch.testing.assert_close(p2, project_convex(points, anchors)[:, 0], rtol=0, atol=1e-9)
    assert project_affine(points[:, 0], anchors).shape == (3, 32)
    assert project_affine(p32, a32).dtype == torch.float32


@pytest.mark.parametrize(
    ("lower", "upper", "match"),
    [
        (0.0, 0.05, "infeasible"),  # N * upper < 1
        (0.2, 1.0, "infeasible"),  # N * lower > 1
        (0.5, 0.2, "larger than upper"),
        (0.0, float("inf"), "finite"),
    ],
)
def test_invalid_bounds_raise(lower, upper, match):
    anchors, points = _data(90, 2, 3, 10, 16)
    with pytest.raises(ValueError, match=match):
        convex_hull_weights(points, anchors, lower, upper)
    with pytest.raises(ValueError, match=match):
        project_convex(points, anchors, lower, upper)


def test_invalid_shapes_raise():
    anchors, points = _data(91, 2, 3, 10, 16)
    with pytest.raises(ValueError, match="anchors must have shape"):
        project_affine(points, anchors[0])
    with pytest.raises(ValueError, match="disagree"):
        project_convex(points[:, :, :8], anchors)
    with pytest.raises(ValueError, match="disagree"):
        project_affine(points[:1], anchors)
    with pytest.raises(ValueError, match="points must have shape"):
        convex_hull_weights(points[0, 0], anchors)
    with pytest.raises(ValueError, match="anchors must have shape"):
        class_center(anchors[0])
