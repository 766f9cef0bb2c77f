"""Exact, batched Euclidean projections onto the feature subspaces used by OPOM.

OPOM (One Person, One Mask) pushes a face feature ``a`` away from the feature
subspace spanned by a person's clean features ("anchors") ``c_1 .. c_N``.  Three
subspace models are used:

* **class center** -- the (not re-normalised) mean of the anchors;
* **affine hull** -- ``{sum_k w_k c_k : sum_k w_k = 1}``;
* **convex hull** (optionally *reduced*) --
  ``{sum_k w_k c_k : sum_k w_k = 1, lower <= w_k <= upper}``.

The reference implementation solves one QP per sample with ``cvxpy``.  The
functions here compute the same projections for a whole batch at once, without a
per-sample Python loop or an external solver:

* the affine hull has a closed form through an SVD of the centred anchors;
* the convex hull QP ``min_w ||a - C^T w||^2`` over the capped simplex is solved
  on the ``N x N`` Gram matrix in two batched phases:

  1. an accelerated projected gradient (FISTA with adaptive restart) on the
     centred Gram matrix, with an exact projection onto the capped simplex
     (threshold ``tau`` found by sorting / broadcasting the breakpoints), run
     only until the set of weights on a bound settles;
  2. a primal active-set method started there, which solves the
     equality-constrained QP on the free set (Cholesky, augmented-Lagrangian
     term for the sum constraint, proximal term for affinely dependent
     anchors) and stops when the KKT conditions hold to ~1e-12 relative.

  The result matches an interior-point solver (cvxpy/Clarabel) to ~1e-9 on the
  distance, including points inside the hull, duplicated anchors, ``N > D`` and
  reduced hulls.

All computations run in float64 internally (on the input's device) and the
results are cast back to the input dtype.  The projections (and weights) are
returned without autograd history: by Danskin's theorem the gradient of
``||a - P(a)||^2`` with respect to ``a`` is ``2 (a - P(a))`` with ``P(a)`` held
constant, so ``((a - P(a).detach()) ** 2).sum()`` already has the right
gradient.  (``class_center`` is a plain mean and stays differentiable.)

Shapes: ``B`` identities, ``M`` points per identity, ``N`` anchors per
identity, ``D`` feature dimension.  ``points`` may be ``(B, M, D)`` or
``(B, D)`` (one point per identity); outputs follow the same convention.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "class_center",
    "convex_hull_weights",
    "project_affine",
    "project_convex",
]

_BOUND_SLACK = 1e-12  # slack allowed in the feasibility test N*lower <= 1 <= N*upper


def _one_cpu_thread(fn):
    """Run ``fn`` with one intra-op thread when its tensors are on the CPU.

    The solvers make many calls on tiny batched matrices (N x N, N <= a few dozen): threads cannot speed those
    up, and LAPACK's threaded kernels on them are slow — under load from other processes, catastrophically
    (a (4, 10, 512) float64 SVD: ~1 ms on one thread, ~100 ms on two busy cores). The thread count is
    restored afterwards; results do not depend on it.
    """

    @functools.wraps(fn)
    def wrapper(points, anchors, *args, **kwargs):
        threads = torch.get_num_threads()
        if threads == 1 or not isinstance(anchors, Tensor) or anchors.device.type != "cpu":
            return fn(points, anchors, *args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(points, anchors, *args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


# --------------------------------------------------------------------------- #
# input handling
# --------------------------------------------------------------------------- #
def _check_anchors(anchors: Tensor) -> None:
    if not isinstance(anchors, Tensor):
        raise TypeError(f"anchors must be a torch.Tensor, got {type(anchors).__name__}")
    if anchors.ndim != 3:
        raise ValueError(
            f"anchors must have shape (B, N, D) (identities, anchors, feature dim), got shape {tuple(anchors.shape)}"
        )
    if anchors.shape[1] < 1 or anchors.shape[2] < 1:
        raise ValueError(f"anchors must have N >= 1 and D >= 1, got shape {tuple(anchors.shape)}")
    if not anchors.is_floating_point():
        raise ValueError(f"anchors must be a floating point tensor, got dtype {anchors.dtype}")


def _prepare(points: Tensor, anchors: Tensor) -> tuple[Tensor, bool]:
    """Validate shapes; return points as (B, M, D) and whether M was added."""
    _check_anchors(anchors)
    if not isinstance(points, Tensor):
        raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    if not points.is_floating_point():
        raise ValueError(f"points must be a floating point tensor, got dtype {points.dtype}")
    squeeze = points.ndim == 2
    if squeeze:
        points = points.unsqueeze(1)
    if points.ndim != 3:
        raise ValueError(f"points must have shape (B, M, D) or (B, D), got shape {tuple(points.shape)}")
    b, _, d = anchors.shape
    if points.shape[0] != b or points.shape[2] != d:
        raise ValueError(
            f"points {tuple(points.shape)} and anchors {tuple(anchors.shape)} disagree: "
            f"expected points of shape ({b}, M, {d})" + (" or (B, D)" if squeeze else "")
        )
    if points.device != anchors.device:
        raise ValueError(f"points and anchors are on different devices ({points.device} vs {anchors.device})")
    return points, squeeze


def _check_bounds(n: int, lower: float, upper: float) -> tuple[float, float]:
    lower, upper = float(lower), float(upper)
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise ValueError(f"weight bounds must be finite, got lower={lower}, upper={upper}")
    if lower > upper:
        raise ValueError(f"lower bound {lower} is larger than upper bound {upper}")
    if n * lower > 1.0 + _BOUND_SLACK or n * upper < 1.0 - _BOUND_SLACK:
        raise ValueError(
            f"infeasible weight bounds for N={n} anchors: the weights must sum to 1 with "
            f"{lower} <= w_k <= {upper}, which needs N*lower <= 1 <= N*upper "
            f"(here N*lower={n * lower:.6g}, N*upper={n * upper:.6g}); "
            f"choose upper >= 1/N = {1.0 / n:.6g} and lower <= 1/N"
        )
    return lower, upper


# --------------------------------------------------------------------------- #
# class center and affine hull
# --------------------------------------------------------------------------- #
def class_center(anchors: Tensor) -> Tensor:
    """Mean of the anchors (not re-normalised).

    Args:
        anchors: ``(B, N, D)`` clean features of ``B`` identities.

    Returns:
        ``(B, D)`` class centers.
    """
    _check_anchors(anchors)
    return anchors.mean(dim=1)


@_one_cpu_thread
@torch.no_grad()
def project_affine(points: Tensor, anchors: Tensor, rtol: float = 1e-6) -> Tensor:
    """Euclidean projection onto the affine hull of the anchors.

    ``P(a) = mu + U U^T (a - mu)`` with ``mu`` the anchor mean and ``U`` an
    orthonormal basis of the centred anchors ``c_k - mu``.  Directions whose
    singular value is below ``rtol * sigma_max`` are dropped, so duplicated or
    collinear anchors and ``N > D`` are handled.

    Args:
        points: ``(B, M, D)`` (or ``(B, D)``) points to project.
        anchors: ``(B, N, D)`` anchors.
        rtol: relative singular-value tolerance for the rank decision.

    Returns:
        Projections with the shape and dtype of ``points``.
    """
    pts, squeeze = _prepare(points, anchors)
    if rtol < 0:
        raise ValueError(f"rtol must be non-negative, got {rtol}")
    c = anchors.to(torch.float64)
    a = pts.to(torch.float64)
    mu = c.mean(dim=1, keepdim=True)  # (B, 1, D)
    centred = c - mu
    # the basis from the SVD of the tall (D, N) matrix: the same subspace, faster than the wide (N, D) one
    u, s, _ = torch.linalg.svd(centred.transpose(1, 2), full_matrices=False)  # u (B, D, K), s (B, K)
    vh = u.transpose(1, 2)  # (B, K, D) orthonormal rows spanning the centred anchors
    n, d = c.shape[1], c.shape[2]
    scale = c.norm(dim=-1).amax(dim=-1, keepdim=True)  # (B, 1)
    floor = max(n, d) * torch.finfo(torch.float64).eps * scale
    thresh = torch.maximum(rtol * s[:, :1], floor)
    keep = (s > thresh).to(torch.float64)  # (B, K)
    coeff = (a - mu) @ vh.transpose(1, 2) * keep.unsqueeze(1)  # (B, M, K)
    proj = mu + coeff @ vh
    proj = proj.to(points.dtype)
    return proj.squeeze(1) if squeeze else proj


# --------------------------------------------------------------------------- #
# convex hull
# --------------------------------------------------------------------------- #
def _project_capped_simplex(v: Tensor, lower: float, upper: float) -> Tensor:
    """Exact projection of each row of ``v`` (..., N) onto
    ``{w : sum w = 1, lower <= w <= upper}`` (assumed non-empty).

    The solution is ``clip(v - tau, lower, upper)`` for the root ``tau`` of the
    non-increasing, piecewise linear ``phi(tau) = sum clip(v - tau, l, u)``
    ``- 1``, whose breakpoints are ``v_i - u`` and ``v_i - l``.
    """
    n = v.shape[-1]
    radius = 1.0 - n * lower
    if upper - lower <= 0.0 or radius <= 0.0:
        return torch.full_like(v, 1.0 / n)
    if upper >= lower + radius:
        # the upper bound can never be active: shifted simplex of size `radius`
        # (sort-based projection of Held et al. / Duchi et al.)
        z = v - lower if lower != 0.0 else v
        zs = torch.sort(z, dim=-1, descending=True).values
        css = torch.cumsum(zs, dim=-1) - radius
        ks = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
        rho = (zs * ks > css).sum(dim=-1, keepdim=True)  # >= 1 since radius > 0
        theta = torch.gather(css, -1, rho - 1) / rho.to(v.dtype)
        w = (z - theta).clamp_(min=0.0)
        return w + lower if lower != 0.0 else w
    bp = torch.cat([v - upper, v - lower], dim=-1)  # (..., 2N) breakpoints
    if n <= 24:
        # small N: evaluate phi at every breakpoint by broadcasting, O(N^2)
        phi = (v.unsqueeze(-2) - bp.unsqueeze(-1)).clamp_(lower, upper).sum(dim=-1)
    else:
        # large N: sort the breakpoints, phi by a cumulative sum of slopes.
        # Crossing v_i - u (increasing tau) frees w_i (slope -1), crossing
        # v_i - l pins it to the lower bound (slope +1).
        delta = torch.cat([-torch.ones_like(v), torch.ones_like(v)], dim=-1)
        bp, order = torch.sort(bp, dim=-1)
        slope = torch.cumsum(torch.gather(delta, -1, order), dim=-1)
        phi = torch.cumsum(slope[..., :-1] * (bp[..., 1:] - bp[..., :-1]), dim=-1)
        phi = torch.cat([torch.zeros_like(phi[..., :1]), phi], dim=-1) + n * upper
    # phi is linear between the last breakpoint with phi >= 1 and the first
    # with phi < 1 (both exist: phi = N u >= 1 at the smallest breakpoint and
    # phi = N l < 1 at the largest).
    ge = phi >= 1.0
    t_lo = torch.where(ge, bp, -math.inf).amax(dim=-1, keepdim=True)
    phi_lo = torch.where(ge, phi, math.inf).amin(dim=-1, keepdim=True)
    t_hi = torch.where(ge, math.inf, bp).amin(dim=-1, keepdim=True)
    phi_hi = torch.where(ge, -math.inf, phi).amax(dim=-1, keepdim=True)
    tau = t_lo + (phi_lo - 1.0) * (t_hi - t_lo) / (phi_lo - phi_hi)
    return (v - tau).clamp_(lower, upper)


def _fista(
    gram: Tensor,
    lin: Tensor,
    w: Tensor,
    lip: Tensor,
    lower: float,
    upper: float,
    max_iter: int,
    tol: float,
    check_every: int = 5,
) -> Tensor:
    """Accelerated projected gradient (FISTA) with gradient-based adaptive
    restart (O'Donoghue & Candes) for ``min 0.5 w^T G w - b^T w`` over the
    capped simplex.

    gram (B, N, N), lin (B, M, N), w (B, M, N) feasible start, lip (B, 1, 1) an
    upper bound on the largest eigenvalue of ``gram``.  Every ``check_every``
    iterations it stops if, for every problem, the set of weights on a bound
    did not change since the previous check and no weight moved by more than
    ``tol`` in the last iteration.  Its job is to hand the active-set finish a
    warm start with (nearly) the right active set.
    """
    # gradient step y - (y G - b) / L  ==  b / L + y (I - G / L): one baddbmm
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    step_mat = eye - gram / lip
    lin_step = lin / lip
    y = w
    k = torch.zeros(w.shape[:-1] + (1,), dtype=w.dtype, device=w.device)
    pattern = None
    for it in range(max_iter):
        w_new = _project_capped_simplex(torch.baddbmm(lin_step, y, step_mat), lower, upper)
        diff = w_new - w
        # restart the momentum where it points against the gradient step
        restart = ((y - w_new) * diff).sum(dim=-1, keepdim=True) > 0
        k = torch.where(restart, 0.0, k + 1.0)
        y = w_new + (k / (k + 3.0)) * diff
        w = w_new
        if (it + 1) % check_every == 0:
            new_pattern = (w <= lower) | (w >= upper)
            if pattern is not None and bool(torch.equal(new_pattern, pattern)) and float(diff.abs().amax()) <= tol:
                break
            pattern = new_pattern
    return w


def _matvec(mat: Tensor, vec: Tensor) -> Tensor:
    """Batched ``mat @ vec`` for (P, N, N) x (P, N); broadcast-sum is much
    faster than bmm for tiny matrices on CPU, bmm for larger ones."""
    if mat.shape[-1] <= 24:
        return (mat * vec.unsqueeze(-2)).sum(dim=-1)
    return (mat @ vec.unsqueeze(-1)).squeeze(-1)


def _free_set_step(
    g: Tensor,
    b_free: Tensor,
    x: Tensor,
    ff: Tensor,
    s: Tensor,
    rho: Tensor,
    refine: int,
) -> Tensor:
    """Solve the equality-constrained QP on the free set (see _active_set).

    g (q, k, k) Gram rows/cols, b_free (q, k) = ``ff * (b - G_FB w_B + rho s)``,
    x (q, k) current weights, ff (q, k) 1.0 on free weights, s (q, 1) required
    sum of the free weights, rho (q, 1).  Returns x with its free entries
    replaced by the solution (the proximal point nearest x).
    """
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    eps = 1e-10 * rho
    h_aug = (g + rho.unsqueeze(-1)) * (ff.unsqueeze(-1) * ff.unsqueeze(-2))
    h = h_aug + eye * (1.0 - ff + eps * ff).unsqueeze(-1)
    chol, info = torch.linalg.cholesky_ex(h)
    if bool((info > 0).any()):  # numerically indefinite: regularise more
        h = h + eye * (1e-8 * rho * ff).unsqueeze(-1)
        chol, _ = torch.linalg.cholesky_ex(h)
    x_hat = x
    z_one = denom = None
    for _ in range(refine + 1):
        # proximal step: min q(w) + eps/2 |w - x_hat|^2 over the free set, in
        # correction form: H d + nu 1_F = res, 1_F^T d = gap.  (Triangular
        # solves are backward stable; an explicit inverse of a nearly singular
        # H is not accurate enough.)
        res = b_free - ff * _matvec(h_aug, x_hat)
        if z_one is None:
            zz = torch.cholesky_solve(torch.stack([ff, res], dim=-1), chol)
            z_one, z = zz[..., 0], zz[..., 1]  # H^-1 1_F, H^-1 res
            denom = (ff * z_one).sum(dim=-1, keepdim=True)
            denom = torch.where(denom > 0, denom, 1.0)
        else:
            z = torch.cholesky_solve(res.unsqueeze(-1), chol).squeeze(-1)
        gap = s - (ff * x_hat).sum(dim=-1, keepdim=True)
        nu = ((ff * z).sum(dim=-1, keepdim=True) - gap) / denom
        x_hat = x_hat + ff * (z - nu * z_one)
    return x_hat


def _active_set(
    gram: Tensor,
    ident: Tensor,
    lin: Tensor,
    w: Tensor,
    lower: float,
    upper: float,
    max_iter: int,
    refine: int = 1,
) -> tuple[Tensor, Tensor]:
    """Batched primal active-set method started from a feasible ``w``.

    gram (B, N, N), ident (P,) identity of each problem, lin (P, N), w (P, N).
    Minimises ``0.5 w^T G w - b^T w`` subject to ``sum w = 1`` and
    ``lower <= w <= upper`` for every problem.  The working set starts as the
    weights lying exactly on a bound.  Each iteration solves the
    equality-constrained QP on the free set, then either stops at the first
    bound it would cross (adding it to the working set) or moves to the
    solution and checks the KKT conditions: stationarity on the free set and
    the signs of the bound multipliers, releasing the most violated bound.
    Only unfinished problems are processed.

    The free-set QP is solved with ``H = G_FF + rho 1_F 1_F^T + eps I_F``: the
    ``rho`` term is constant on ``{1^T w_F = s}`` (so the problem is
    unchanged) but makes ``H`` well conditioned on every direction that moves
    ``C^T w`` or the sum; only exact affine dependencies of the anchors remain,
    handled by the small proximal ``eps`` (the step nearest the current
    iterate).  Steps are taken in correction form (iterative refinement).
    """
    p_count, n = w.shape
    w = w.clone()
    at_lo = w <= lower
    at_up = (w >= upper) & ~at_lo
    done = torch.zeros(p_count, dtype=torch.bool, device=w.device)
    g_scale = gram.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1)  # (B,)
    scale = torch.maximum(g_scale[ident], lin.abs().amax(dim=-1)).clamp(min=1.0)  # (P,)
    kkt_tol = 1e-12 * scale
    for _ in range(max_iter):
        idx = (~done).nonzero().squeeze(-1)
        q = idx.numel()
        if q == 0:
            break
        if q == p_count:
            g, b, x, sc, lo, up = gram[ident], lin, w, scale, at_lo, at_up
        else:
            g, b, x, sc = gram[ident[idx]], lin[idx], w[idx], scale[idx]
            lo, up = at_lo[idx], at_up[idx]
        lo, up = lo.clone(), up.clone()
        free = ~(lo | up)
        ff = free.to(w.dtype)
        rho = sc.unsqueeze(-1)  # (q, 1)
        xb = x * (1.0 - ff)
        s = 1.0 - xb.sum(dim=-1, keepdim=True)  # required sum of the free weights
        b_free = ff * (b - _matvec(g, xb) + rho * s)  # b_F - G_FB w_B + rho s
        k = int(ff.sum(dim=-1).amax()) if n > 24 else n
        if k < n:
            # large N: the free sets are usually much smaller than N; solve on
            # the first k = max |F| indices after moving the free ones first
            sel = torch.sort((~free).to(torch.uint8), dim=-1, stable=True).indices[:, :k]
            g_sel = g.gather(1, sel.unsqueeze(-1).expand(q, k, n))
            g_sel = g_sel.gather(2, sel.unsqueeze(1).expand(q, k, k))
            step = _free_set_step(
                g_sel,
                b_free.gather(1, sel),
                x.gather(1, sel),
                ff.gather(1, sel),
                s,
                rho,
                refine,
            )
            x_hat = x.scatter(1, sel, step)
        else:
            x_hat = _free_set_step(g, b_free, x, ff, s, rho, refine)
        p = x_hat - x
        # ratio test against the bounds that x_hat crosses
        below = free & (x_hat < lower)
        above = free & (x_hat > upper)
        ratio = torch.where(below, (lower - x) / torch.where(below, p, -1.0), math.inf)
        ratio = torch.where(above, (upper - x) / torch.where(above, p, 1.0), ratio)
        alpha, block = ratio.min(dim=-1)
        blocked = alpha < 1.0
        x_new = torch.where(blocked.unsqueeze(-1), x + alpha.clamp(0.0, 1.0).unsqueeze(-1) * p, x_hat)
        if bool(blocked.any()):
            rq = blocked.nonzero().squeeze(-1)
            bq = block[rq]
            hit_lo = below[rq, bq]
            hit = hit_lo.to(x.dtype)
            x_new[rq, bq] = lower * hit + upper * (1.0 - hit)  # exact bound values
            lo[rq, bq] = hit_lo
            up[rq, bq] = ~hit_lo
        # KKT check of the unblocked problems
        grad = _matvec(g, x_new) - b  # G w - b
        n_free = ff.sum(dim=-1)
        nu_free = -(grad * ff).sum(dim=-1) / n_free.clamp(min=1.0)
        stat = ((grad + nu_free.unsqueeze(-1)).abs() * ff).amax(dim=-1)
        # without free weights nu is only bracketed by the multipliers' signs
        nu_lo = torch.where(lo, -grad, -math.inf).amax(dim=-1)  # nu >= -grad_i, lower
        nu_hi = torch.where(up, -grad, math.inf).amin(dim=-1)  # nu <= -grad_i, upper
        nu_empty = torch.where(
            torch.isinf(nu_lo),
            nu_hi,
            torch.where(torch.isinf(nu_hi), nu_lo, 0.5 * (nu_lo + nu_hi)),
        )
        lam = grad + torch.where(n_free > 0, nu_free, nu_empty).unsqueeze(-1)
        # multipliers: lam >= 0 on lower-active, lam <= 0 on upper-active
        viol = torch.where(lo, -lam, torch.where(up, lam, 0.0))
        worst, which = viol.max(dim=-1)
        tol_q = kkt_tol if q == p_count else kkt_tol[idx]
        stationary = ~blocked & (stat <= tol_q)
        optimal = stationary & (worst <= tol_q)
        release = (stationary & ~optimal).nonzero().squeeze(-1)
        lo[release, which[release]] = False
        up[release, which[release]] = False
        if q == p_count:
            w, at_lo, at_up = x_new, lo, up
            done = optimal
        else:
            w[idx] = x_new
            at_lo[idx] = lo
            at_up[idx] = up
            done[idx[optimal]] = True
    return w, done


def _feasible_start(w: Tensor, lower: float, upper: float) -> Tensor:
    """Rows of ``w`` that are feasible (to 1e-12) are kept as they are, so that weights exactly on a bound stay
    there and the active-set finish starts from the same working set; other rows are projected."""
    inside = ((w >= lower) & (w <= upper)).all(dim=-1, keepdim=True)
    feasible = inside & ((w.sum(dim=-1, keepdim=True) - 1.0).abs() <= 1e-12)
    if bool(feasible.all()):
        return w
    return torch.where(feasible, w, _project_capped_simplex(w, lower, upper))


def _fista_start(gram: Tensor, lin: Tensor, w0: Tensor, lower: float, upper: float, max_iter: int,
                 tol: float) -> Tensor:
    """The FISTA phase on the centred Gram matrix: a warm start for the active-set finish."""
    bsz = gram.shape[0]
    # FISTA runs on the centred Gram matrix Gc = P G P (P = I - 11^T / N).  On
    # the feasible set {sum w = 1}, G w = Gc w + G 1 / N + (a multiple of 1),
    # and the simplex projection ignores multiples of 1; so the gradient can
    # be taken as Gc w - (b - G 1 / N), and the step size from Gc, the
    # curvature along feasible directions.  The clustered anchors of one
    # identity have G ~ N |mu|^2 11^T + small: centring removes that large
    # eigenvalue and allows far larger steps.
    row_mean = gram.mean(dim=-1, keepdim=True)  # (B, N, 1) = G 1 / N
    centred = gram - row_mean
    centred = centred - centred.mean(dim=-2, keepdim=True)
    lin_c = lin - row_mean.transpose(1, 2)
    # Gershgorin bounds on the largest eigenvalue of Gc (cheap and safe;
    # lambda_max(Gc) <= lambda_max(G))
    lip = torch.minimum(gram.abs().sum(dim=-1), centred.abs().sum(dim=-1))
    lip = lip.amax(dim=-1).clamp(min=1e-12).view(bsz, 1, 1)
    return _fista(centred, lin_c, w0, lip, lower, upper, max_iter, tol)


@_one_cpu_thread
@torch.no_grad()
def _convex_weights64(
    pts: Tensor,
    anchors: Tensor,
    lower: float,
    upper: float,
    max_iter: int,
    tol: float,
    max_active_set_iter: int | None,
    init: Tensor | None = None,
) -> Tensor:
    """float64 weights (B, M, N) for validated pts (B, M, D), anchors (B, N, D).

    ``init`` (B, M, N), when given, replaces the FISTA phase: it is projected
    onto the feasible set and the active-set finish starts from there.
    """
    bsz, m, _ = pts.shape
    n = anchors.shape[1]
    lower, upper = _check_bounds(n, lower, upper)
    if max_iter < 0:
        raise ValueError(f"max_iter must be non-negative, got {max_iter}")
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    if max_active_set_iter is None:
        max_active_set_iter = 3 * n + 10
    c = anchors.to(torch.float64)
    a = pts.to(torch.float64)
    w0 = torch.full((bsz, m, n), 1.0 / n, dtype=torch.float64, device=c.device)
    if n * upper <= 1.0 + _BOUND_SLACK or n * lower >= 1.0 - _BOUND_SLACK or n == 1:
        return w0  # the uniform weights are the only feasible point
    if m == 0 or bsz == 0:
        return w0
    gram = c @ c.transpose(1, 2)  # (B, N, N)
    lin = a @ c.transpose(1, 2)  # (B, M, N)
    if init is not None:
        if tuple(init.shape) != (bsz, m, n):
            raise ValueError(f"init weights of shape {tuple(init.shape)} do not match the problem: "
                             f"expected ({bsz}, {m}, {n}) (or ({bsz}, {n}) for one point per identity)")
        w_fista = _feasible_start(init.to(device=c.device, dtype=torch.float64), lower, upper)
    else:
        w_fista = _fista_start(gram, lin, w0, lower, upper, max_iter, tol)
    ident = torch.arange(bsz, device=c.device).repeat_interleave(m)
    w_as, done = _active_set(
        gram,
        ident,
        lin.reshape(bsz * m, n),
        w_fista.reshape(bsz * m, n),
        lower,
        upper,
        max_active_set_iter,
    )
    w_as, done = w_as.view(bsz, m, n), done.view(bsz, m, 1)
    if bool(done.all()):
        return w_as
    # safeguard where the active-set cap was hit: keep the closer candidate
    r_f = a - w_fista @ c
    r_a = a - w_as @ c
    keep = (r_a * r_a).sum(dim=-1, keepdim=True) <= (r_f * r_f).sum(dim=-1, keepdim=True)
    return torch.where(done | keep, w_as, w_fista)


def _init(init: Tensor | None, squeeze: bool) -> Tensor | None:
    """Starting weights as (B, M, N), following the points' (B, D) convention."""
    if init is None:
        return None
    if not isinstance(init, Tensor) or not init.is_floating_point():
        raise TypeError("init must be a floating point torch.Tensor of weights")
    return init.unsqueeze(1) if squeeze else init


def convex_hull_weights(
    points: Tensor,
    anchors: Tensor,
    lower: float = 0.0,
    upper: float = 1.0,
    *,
    max_iter: int = 25,
    tol: float = 1e-4,
    max_active_set_iter: int | None = None,
    init: Tensor | None = None,
) -> Tensor:
    """Weights of the Euclidean projection onto the (reduced) convex hull.

    Solves, for every identity ``b`` and point ``m``::

        min_w || points[b, m] - w @ anchors[b] ||^2
        s.t.  sum_k w_k = 1,  lower <= w_k <= upper

    ``lower=0, upper=1`` is the convex hull, ``upper < 1`` a reduced hull and
    ``lower = upper = 1/N`` the class center.  The bounds must satisfy
    ``N*lower <= 1 <= N*upper`` (``ValueError`` otherwise).

    Method: FISTA on the Gram matrix until the active set settles, then an
    exact active-set finish (KKT conditions checked to ~1e-11 relative).

    Args:
        points: ``(B, M, D)`` (or ``(B, D)``) points.
        anchors: ``(B, N, D)`` anchors.
        lower, upper: bounds on every weight.
        max_iter: iteration cap of the accelerated projected gradient phase.
        tol: it stops once the active set is stable and no weight moves by
            more than ``tol`` per iteration (the active-set finish makes the
            result exact; ``tol`` only trades the work of the two phases).
        max_active_set_iter: iteration cap of the active-set finish
            (default ``3 N + 10``).
        init: optional starting weights of the shape of the result, e.g.
            the solution for nearby points (the previous attack iteration);
            the FISTA phase is then skipped and the active-set finish starts
            from ``init`` projected onto the feasible set.  The result is the
            same projection (to the KKT tolerance); only the work changes.

    Returns:
        ``(B, M, N)`` (or ``(B, N)``) feasible weights in the dtype of
        ``points``.  ``w`` is not unique when anchors are affinely dependent;
        the projected point ``w @ anchors`` is.
    """
    pts, squeeze = _prepare(points, anchors)
    w = _convex_weights64(pts, anchors, lower, upper, max_iter, tol, max_active_set_iter, _init(init, squeeze))
    w = w.to(points.dtype)
    return w.squeeze(1) if squeeze else w


def project_convex(
    points: Tensor,
    anchors: Tensor,
    lower: float = 0.0,
    upper: float = 1.0,
    *,
    max_iter: int = 25,
    tol: float = 1e-4,
    max_active_set_iter: int | None = None,
    init: Tensor | None = None,
) -> Tensor:
    """Euclidean projection onto the (reduced) convex hull of the anchors.

    Equals ``convex_hull_weights(points, anchors, ...) @ anchors`` (computed in
    float64).

    Args:
        points: ``(B, M, D)`` (or ``(B, D)``) points.
        anchors: ``(B, N, D)`` anchors.
        lower, upper, max_iter, tol, max_active_set_iter, init: see
            :func:`convex_hull_weights`.

    Returns:
        Projections with the shape and dtype of ``points``.
    """
    pts, squeeze = _prepare(points, anchors)
    w = _convex_weights64(pts, anchors, lower, upper, max_iter, tol, max_active_set_iter, _init(init, squeeze))
    proj = (w @ anchors.to(torch.float64)).to(points.dtype)
    return proj.squeeze(1) if squeeze else proj
