"""A deterministic world of synthetic face-like identities, rendered in the aligned 112x112 space.

Every identity is a vector of shape, colour and fine-texture parameters drawn from a generator seeded
by ``(world seed, identity index)``; every image of an identity adds its own nuisance (residual pose
after alignment, yaw and pitch of the inner features, expression, lighting, background, sensor noise).
Identity ``k`` therefore looks the same whichever pool or split asks for it, and images are rendered
batched on the CPU with plain tensor ops (no resampling, no Python loop over pixels).

Faces carry identity at every scale: geometry (face outline, feature placement), colours (skin, hair,
iris, lips) and a low-contrast skin texture (a few oriented gratings and marks). That last, fine-grained
cue is what real FR models also lean on, and it is what makes an 8/255 mask meaningful here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from opom.errors import DatasetError

IMAGE_SIZE = 112
# bump when a change to the renderer changes the images (it is part of every cache key)
WORLD_VERSION = 1
N_GRATINGS = 8
N_MARKS = 4

# names and ranges of the identity parameters (uniform draws); order is the column order
_IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    "face_w": (0.50, 0.64), "face_h": (0.68, 0.82), "face_p": (1.7, 2.6), "face_y": (0.02, 0.10),
    "skin_r": (0.45, 0.95), "skin_g": (0.62, 0.84), "skin_b": (0.68, 0.96),
    "hair_r": (0.05, 0.75), "hair_g": (0.55, 0.9), "hair_b": (0.45, 0.9),
    "hair_line": (-0.62, -0.36), "hair_vol": (1.02, 1.22), "hair_side": (-0.15, 0.45),
    "eye_y": (-0.16, -0.02), "eye_dx": (0.21, 0.33), "eye_rx": (0.075, 0.115), "eye_ry": (0.032, 0.055),
    "iris_r": (0.05, 0.6), "iris_g": (0.1, 0.6), "iris_b": (0.05, 0.6), "iris_s": (0.45, 0.8),
    "brow_dy": (0.07, 0.14), "brow_t": (0.012, 0.03), "brow_tilt": (-0.25, 0.25), "brow_len": (0.09, 0.15),
    "nose_len": (0.16, 0.30), "nose_w": (0.045, 0.09), "nose_shade": (0.04, 0.14),
    "mouth_y": (0.34, 0.50), "mouth_w": (0.13, 0.24), "lip_t": (0.025, 0.05),
    "lip_r": (0.55, 0.9), "lip_g": (0.25, 0.55), "lip_b": (0.25, 0.5),
}
_IDX = {name: i for i, name in enumerate(_IDENTITY_RANGES)}


@dataclass(frozen=True)
class IdentityParams:
    """Per-identity parameters as tensors with a leading identity dimension ``K``."""

    scalars: torch.Tensor  # (K, len(_IDENTITY_RANGES))
    gratings: torch.Tensor  # (K, N_GRATINGS, 7): freq, angle, phase, amplitude, r, g, b weights
    marks: torch.Tensor  # (K, N_MARKS, 4): x, y, radius, darkness

    def __getitem__(self, index) -> IdentityParams:
        return IdentityParams(self.scalars[index], self.gratings[index], self.marks[index])


def identity_params(identities: np.ndarray | list[int], seed: int, texture: float = 1.0) -> IdentityParams:
    """Draw the parameters of the given global identity indices (deterministic per index)."""
    scalars, gratings, marks = [], [], []
    lo = np.array([r[0] for r in _IDENTITY_RANGES.values()])
    hi = np.array([r[1] for r in _IDENTITY_RANGES.values()])
    for k in identities:
        rng = np.random.default_rng([seed, 1, int(k)])
        scalars.append(lo + (hi - lo) * rng.random(len(lo)))
        g = np.empty((N_GRATINGS, 7))
        g[:, 0] = rng.uniform(4.0, 16.0, N_GRATINGS)  # cycles per unit length
        g[:, 1] = rng.uniform(0, math.pi, N_GRATINGS)
        g[:, 2] = rng.uniform(0, 2 * math.pi, N_GRATINGS)
        g[:, 3] = texture * rng.uniform(0.012, 0.035, N_GRATINGS)
        g[:, 4:] = rng.uniform(-1, 1, (N_GRATINGS, 3)) * 0.5 + 1.0
        gratings.append(g)
        m = np.empty((N_MARKS, 4))
        m[:, 0] = rng.uniform(-0.4, 0.4, N_MARKS)
        m[:, 1] = rng.uniform(-0.3, 0.55, N_MARKS)
        m[:, 2] = rng.uniform(0.012, 0.03, N_MARKS)
        m[:, 3] = texture * rng.uniform(0.0, 0.25, N_MARKS)
        marks.append(m)
    as_t = lambda a: torch.tensor(np.stack(a), dtype=torch.float32)  # noqa: E731
    return IdentityParams(as_t(scalars), as_t(gratings), as_t(marks))


def nuisance_params(identities: np.ndarray, images: np.ndarray, seed: int, strength: float = 1.0) -> torch.Tensor:
    """Per-image nuisance draws (deterministic per (identity, image index)); returns (B, 24)."""
    out = np.empty((len(identities), 24))
    for row, (k, j) in enumerate(zip(identities, images, strict=True)):
        out[row] = np.random.default_rng([seed, 2, int(k), int(j)]).random(24)
    return torch.tensor(out, dtype=torch.float32) * strength + (1 - strength) * 0.5


def _soft(sdf: torch.Tensor, sharp: float = 70.0) -> torch.Tensor:
    """Soft inside-mask from a signed distance (positive inside), ~1.5 px transition."""
    return torch.sigmoid(sharp * sdf)


def _ellipse(x, y, cx, cy, rx, ry, p: float | torch.Tensor | None = None):
    """First-order signed distance to an ellipse (or a superellipse of exponent ``p``), positive inside."""
    u, v = (x - cx) / rx, (y - cy) / ry
    if p is None:
        r = torch.sqrt(u * u + v * v + 1e-12)
        gu, gv = u / (rx * r), v / (ry * r)
    else:
        au, av = u.abs() + 1e-6, v.abs() + 1e-6
        pu, pv = au ** (p - 1), av ** (p - 1)
        r = (pu * au + pv * av) ** (1.0 / p)
        rp = r ** (1 - p)
        gu, gv = rp * pu / rx, rp * pv / ry
    return (1.0 - r) / torch.sqrt(gu * gu + gv * gv + 1e-12)


def _paint(canvas, mask, color):
    return canvas * (1 - mask) + color * mask


def render(ident: IdentityParams, nuis: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Render images (B, 3, size, size) in [0, 1]; ``ident`` rows align with ``nuis`` rows."""
    b = nuis.shape[0]
    s = ident.scalars
    P = {name: s[:, i].view(b, 1, 1) for name, i in _IDX.items()}
    n = [nuis[:, i].view(b, 1, 1) for i in range(nuis.shape[1])]
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    gx, gy = gx.expand(b, size, size), gy.expand(b, size, size)

    # residual similarity jitter left after 5-point alignment
    roll = (n[0] - 0.5) * math.radians(10)
    scale = 1 + (n[1] - 0.5) * 0.10
    tx, ty = (n[2] - 0.5) * 0.06, (n[3] - 0.5) * 0.06
    xr = (torch.cos(roll) * (gx - tx) + torch.sin(roll) * (gy - ty)) / scale
    yr = (-torch.sin(roll) * (gx - tx) + torch.cos(roll) * (gy - ty)) / scale
    yaw, pitch = (n[4] - 0.5) * 0.16, (n[5] - 0.5) * 0.08
    xi, yi = xr - yaw, yr - pitch  # inner features move with yaw / pitch
    xf = xr - 0.3 * yaw  # the outline moves less than the features

    # background: two colours, a gradient and soft blobs
    c1 = torch.stack([n[6], n[7], n[8]], 1)
    c2 = torch.stack([n[9], n[10], n[11]], 1)
    ga = n[12] * 2 * math.pi
    t = (0.5 + 0.5 * (torch.cos(ga) * gx + torch.sin(ga) * gy)).unsqueeze(1)
    img = c1 * (1 - t) + c2 * t
    img = img + 0.08 * torch.sin(gx.unsqueeze(1) * (2 + 6 * n[13].unsqueeze(1)) + 7 * n[14].unsqueeze(1))

    hair = torch.stack([P["hair_r"], P["hair_r"] * P["hair_g"], P["hair_r"] * P["hair_g"] * P["hair_b"]], 1)
    skin = torch.stack([P["skin_r"], P["skin_r"] * P["skin_g"], P["skin_r"] * P["skin_g"] * P["skin_b"]], 1)
    fw, fh, fy = P["face_w"], P["face_h"], P["face_y"]

    # hair behind the head
    hv = P["hair_vol"]
    back = _soft(_ellipse(xf, yr, 0, fy - 0.08, fw * hv, fh * hv))
    back = back * _soft(fy + fh * P["hair_side"] - yr, 30)
    img = _paint(img, back.unsqueeze(1), hair)

    # face with skin texture (gratings and marks live in face coordinates: they follow pose)
    face = _soft(_ellipse(xf, yr, 0, fy, fw, fh, P["face_p"])).unsqueeze(1)
    g = ident.gratings
    freq, ang, ph, amp = (g[:, :, i].view(b, -1, 1, 1) for i in range(4))
    proj = torch.cos(ang) * xi.unsqueeze(1) + torch.sin(ang) * yi.unsqueeze(1)
    waves = amp * torch.sin(2 * math.pi * freq * proj + ph)  # (B, G, H, W)
    texture = torch.einsum("bghw,bgc->bchw", waves, g[:, :, 4:7])
    mk = ident.marks
    for m in range(mk.shape[1]):
        mx, my, mr, md = (mk[:, m, i].view(b, 1, 1) for i in range(4))
        texture = texture - md.unsqueeze(1) * _soft(mr - torch.sqrt((xi - mx) ** 2 + (yi - my) ** 2)).unsqueeze(1)
    img = _paint(img, face, skin * (1 + texture))

    # nose: a shaded ridge and nostrils
    nl, nw = P["nose_len"], P["nose_w"]
    ny0 = P["eye_y"] + 0.06
    ridge = _soft(_ellipse(xi + 0.35 * nw, yi, 0, ny0 + nl / 2, nw * 0.35, nl / 2)) * P["nose_shade"]
    nostril = _soft(_ellipse(xi.abs(), yi, nw * 0.55, ny0 + nl, nw * 0.3, nw * 0.18)) * 0.35
    img = img * (1 - ((ridge + nostril) * face.squeeze(1)).unsqueeze(1))

    # eyes: sclera, iris, pupil; openness from expression
    open_ = 0.55 + 0.55 * n[15]
    ex, ey = xi.abs(), yi
    sclera = _soft(_ellipse(ex, ey, P["eye_dx"], P["eye_y"], P["eye_rx"], P["eye_ry"] * open_))
    img = _paint(img, sclera.unsqueeze(1), torch.full_like(skin, 0.93))
    gaze = (n[16] - 0.5) * 0.03
    ir = P["eye_ry"] * P["iris_s"] * 1.6
    iris = _soft(_ellipse(ex, ey, P["eye_dx"] + gaze * torch.sign(xi), P["eye_y"], ir, ir)) * sclera
    iris_c = torch.stack([P["iris_r"], P["iris_g"], P["iris_b"]], 1)
    img = _paint(img, iris.unsqueeze(1), iris_c)
    pupil = _soft(_ellipse(ex, ey, P["eye_dx"] + gaze * torch.sign(xi), P["eye_y"], ir * 0.45, ir * 0.45)) * sclera
    img = _paint(img, pupil.unsqueeze(1), torch.full_like(skin, 0.03))

    # brows, raised by expression and tilted per identity
    raise_ = (n[17] - 0.3) * 0.05
    by = P["eye_y"] - P["brow_dy"] - raise_ + P["brow_tilt"] * (ex - P["eye_dx"])
    brow = _soft(_ellipse(ex, ey, P["eye_dx"], by, P["brow_len"], P["brow_t"]))
    img = _paint(img, brow.unsqueeze(1), hair * 0.7)

    # mouth: lips with a smile curve and an opening
    smile = (n[18] - 0.35) * 3.0
    my = P["mouth_y"] - smile * torch.minimum(xi * xi, P["mouth_w"] ** 2) * 0.5
    lip_c = torch.stack([P["lip_r"], P["lip_g"], P["lip_b"]], 1) * skin / skin.amax(1, keepdim=True)
    mouth_open = torch.clamp(n[19] - 0.6, min=0) * 0.1
    lips = _soft(_ellipse(xi, yi, 0, my, P["mouth_w"], P["lip_t"] + mouth_open))
    img = _paint(img, lips.unsqueeze(1), lip_c)
    gap = _soft(_ellipse(xi, yi, 0, my, P["mouth_w"] * 0.85, P["lip_t"] * 0.15 + mouth_open))
    img = _paint(img, gap.unsqueeze(1), torch.full_like(skin, 0.08))

    # fringe over the forehead
    fringe = _soft(P["hair_line"] + fy * 0.5 - yr + 0.05 * torch.sin(xr * (3 + 4 * P["hair_side"])), 60)
    fringe = fringe * _soft(_ellipse(xf, yr, 0, fy - 0.04, fw * hv, fh * hv))
    img = _paint(img, fringe.unsqueeze(1), hair)

    # lighting: gain, a directional gradient, colour cast, gamma; then sensor noise
    gain = 0.72 + 0.5 * n[20]
    la = n[21] * 2 * math.pi
    shade = 1 + 0.35 * n[22] * (torch.cos(la) * gx + torch.sin(la) * gy)
    cast = 1 + (torch.stack([n[23], 1 - n[23], n[12]], 1) - 0.5) * 0.12
    img = img.clamp(0, 1) * (gain * shade).unsqueeze(1) * cast
    gamma = (0.8 + 0.45 * n[7]).unsqueeze(1)
    img = img.clamp(1e-4, 1) ** gamma
    return img.clamp(0, 1)


def add_sensor_noise(images: torch.Tensor, keys: np.ndarray, seed: int, max_sigma: float = 0.02) -> torch.Tensor:
    """Gaussian sensor noise with a per-image sigma, deterministic per key."""
    out = torch.empty_like(images)
    for row, key in enumerate(keys):
        gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 3, *np.atleast_1d(key)]).integers(2**62)))
        sigma = max_sigma * torch.rand((), generator=gen)
        out[row] = images[row] + sigma * torch.randn(images.shape[1:], generator=gen)
    return out.clamp(0, 1)


def render_images(identities, image_indices, seed: int, texture: float = 1.0, nuisance: float = 1.0,
                  noise: float = 0.02, batch_size: int = 16) -> torch.Tensor:
    """Render ``identity[i]``'s image ``image_indices[i]`` for every i, as uint8 (B, 3, 112, 112)."""
    identities = np.asarray(identities, dtype=np.int64)
    image_indices = np.asarray(image_indices, dtype=np.int64)
    uniq, inverse = np.unique(identities, return_inverse=True)
    params = identity_params(uniq, seed, texture)
    out = torch.empty((len(identities), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small elementwise ops: one thread is as fast, and never oversubscribes the CPU
    try:
        _render_into(out, identities, image_indices, inverse, params, seed, nuisance, noise, batch_size)
    finally:
        torch.set_num_threads(threads)
    return out


def _render_into(out, identities, image_indices, inverse, params, seed, nuisance, noise, batch_size) -> None:
    for start in range(0, len(identities), batch_size):
        sl = slice(start, start + batch_size)
        nuis = nuisance_params(identities[sl], image_indices[sl], seed, nuisance)
        img = render(params[torch.as_tensor(inverse[sl])], nuis)
        keys = np.stack([identities[sl], image_indices[sl]], 1)
        img = add_sensor_noise(img, keys, seed, noise)
        out[sl] = (img * 255).round().to(torch.uint8)


# identity index offsets of the disjoint pools
PROTECT_OFFSET = 1_000_000
DISTRACTOR_OFFSET = 2_000_000


class SyntheticFaces:
    """``dataset=synthetic``: a training pool for FR models and a disjoint protection pool.

    Training pool: ``train_identities`` x ``train_images``. Protection pool: ``identities`` people with
    ``images_per_identity`` photos each, split into ``mask_images`` (crafting) and ``test_images``
    (evaluation probes/gallery), plus ``distractors`` one-photo people for the gallery. Rendered once and
    cached under ``cache_dir``.
    """

    real_people = False  # figures may show its faces (privacy.face_images=auto)

    def __init__(self, seed: int = 0, identities: int = 30, images_per_identity: int = 15, mask_images: int = 10,
                 test_images: int = 5, distractors: int = 500, train_identities: int = 300, train_images: int = 12,
                 texture: float = 1.0, nuisance: float = 1.0, noise: float = 0.02, cache_dir: str | None = None):
        if identities < 1 or distractors < 0 or train_identities < 2 or train_images < 1:
            raise DatasetError("dataset.identities and dataset.train_images must be >= 1, "
                               "dataset.train_identities >= 2 and dataset.distractors >= 0")
        if train_identities >= PROTECT_OFFSET:
            raise DatasetError(f"dataset.train_identities must be < {PROTECT_OFFSET}")
        self.seed, self.identities, self.images_per_identity = seed, identities, images_per_identity
        self.mask_images, self.test_images, self.distractors = mask_images, test_images, distractors
        self.train_identities, self.train_images = train_identities, train_images
        self.style = {"texture": texture, "nuisance": nuisance, "noise": noise}
        self.cache_dir = cache_dir

    def _render(self, identities, images) -> torch.Tensor:
        return render_images(identities, images, self.seed, **self.style)

    def training_key(self) -> dict:
        """Everything that determines the training pool (part of every trained model's cache key)."""
        return {"world": "synthetic", "version": WORLD_VERSION, "seed": self.seed,
                "train_identities": self.train_identities,
                "train_images": self.train_images, **self.style}

    def training_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (K * train_images, 3, 112, 112) and their identity labels 0..K-1."""
        from opom.cache import cached

        k, n = self.train_identities, self.train_images
        ids, imgs = np.repeat(np.arange(k), n), np.tile(np.arange(n), k)
        data = cached(self.cache_dir or _default_cache(), "data", {"pool": "train", **self.training_key()},
                      lambda: {"images": self._render(ids, imgs)})
        return data["images"], torch.as_tensor(ids)

    def protection_set(self):
        """The :class:`~opom.data.protection.ProtectionSet` of the protection pool; its distractors are a
        :class:`~opom.data.gallery.RenderedGallery` (rendered chunk by chunk when evaluated, never all held)."""
        from opom.cache import cached
        from opom.data.gallery import RenderedGallery
        from opom.data.protection import ProtectionSet

        k, n = self.identities, self.images_per_identity
        key = {"pool": "protect", "version": WORLD_VERSION, "seed": self.seed, "identities": k,
               "images_per_identity": n, **self.style}

        def build():
            faces = self._render(PROTECT_OFFSET + np.repeat(np.arange(k), n), np.tile(np.arange(n), k))
            return {"faces": faces.view(k, n, *faces.shape[1:])}

        data = cached(self.cache_dir or _default_cache(), "data", key, build)
        people = {f"synthetic-{i:05d}": data["faces"][i] for i in range(k)}
        distractors = RenderedGallery(self.distractors, self.render_distractors,
                                      {"world": "synthetic", "pool": "distractors", "version": WORLD_VERSION,
                                       "seed": self.seed, **self.style})
        return ProtectionSet.from_identity_images(people, self.mask_images, self.test_images, distractors)

    def render_distractors(self, start: int, stop: int) -> torch.Tensor:
        """Distractor people ``start`` .. ``stop - 1`` (one photo each), uint8 (stop - start, 3, 112, 112)."""
        ids = DISTRACTOR_OFFSET + np.arange(start, stop)
        return self._render(ids, np.zeros(len(ids), int))


def _default_cache() -> str:
    import os

    return os.environ.get("OPOM_CACHE_DIR", os.path.expanduser("~/.cache/opom"))
