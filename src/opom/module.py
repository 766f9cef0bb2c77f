"""The LightningModule that crafts masks: its only learnable parameter is one mask per identity."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from opom.allocator import reuse_freed_memory
from opom.attack import AttackState, Budget, SignAttack, batch_seed, feature_dropout, select_dfanet_sites, uniform_noise
from opom.errors import ConfigError
from opom.mask_store import MaskStore
from opom.methods import Method
from opom.transforms import RandomTransforms

ENSEMBLE_WEIGHTINGS = ("distance", "gradient")
REGIONS = ("full", "face")


def transfer_options(canvas, ensemble: str = "distance", transforms=(), transform_p: float = 0.5,
                     transform_params: dict | None = None, region: str = "full", chroma: float = 1.0,
                     texture: float = 0.0, seed: int = 0) -> dict:
    """The crafter's transfer-extension keyword arguments (``transforms``, ``ensemble``, ``budget``) from plain
    settings, for images on ``canvas`` (:class:`~opom.data.alignment.Canvas`): the one place the pipeline
    (``crafting.*``), enrolment and refinement turn settings into crafting options."""
    from opom.data.alignment import face_region

    if region not in REGIONS:
        raise ConfigError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
    budget = Budget(torch.from_numpy(face_region(canvas)) if region == "face" else None, float(chroma), float(texture),
                    texture_window=2 * round(2.5 * canvas.scale) + 1)
    params = transform_params or {}
    chosen = RandomTransforms({n: params.get(n, {}) for n in transforms or ()}, p=float(transform_p), seed=seed,
                              pixels_per_canonical=canvas.scale)
    return {"transforms": chosen, "ensemble": ensemble, "budget": budget}


class MaskCrafter(L.LightningModule):
    """Crafts ``masks`` (I, 3, H, W) — one universal L-inf mask per identity — against frozen surrogate(s).

    ``surrogate`` is one model or a sequence of them (an ensemble, an *extension*). Each surrogate keeps its own
    features, subspace and loss (its own copy of ``method``). ``ensemble`` combines them: ``distance`` ascends
    ``sum_k D_k * loss_k / K`` — OPOM's losses are means over the D feature dimensions, so scaling by D makes each
    term its squared feature-space distance and 128-d and 1024-d models count alike; ``gradient`` normalises each
    model's input gradient (mean absolute value 1 per identity) before summing, so no model's gradient scale
    dominates. For one surrogate both are the paper's objective (sign steps ignore a positive factor).

    Extensions for masks that must survive photos they never saw (all off by default; see the README):
    ``transforms`` (:class:`~opom.transforms.RandomTransforms`: input diversity, alignment jitter, JPEG, resize,
    blur) are drawn anew at every step between the perturbed images and the surrogates; ``budget``
    (:class:`~opom.attack.Budget`) shapes the L-inf ball (a soft face region, limited colour change);
    ``init_masks`` (I, 3, H, W) start the attack from given masks instead of noise (per-photo refinement);
    DFANet's dropout goes where each model declares it, or — for models that declare no sites — to the sites
    chosen by :func:`~opom.attack.select_dfanet_sites` so that the clean embedding keeps a cosine of at least
    ``dfanet_min_cosine`` with itself.

    One training step is one attack iteration for one batch of identities (see
    :class:`~opom.data.protection.IdentityChunks`); the attack is the optimiser, so optimisation is manual.
    The surrogate stays in eval mode (BatchNorm frozen, identities in a batch independent); an attack with
    DFANet dropout switches only that dropout on. The loss is logged every ``trainer.log_every_n_steps`` steps
    (Lightning's cadence), and not at all when no logger and no progress bar would show it.

    Memory: by default the parameter ``masks`` holds every identity's mask. With a ``mask_store``
    (:class:`~opom.mask_store.MaskStore`, ``crafting.mask_store=disk``) it holds only the batch being crafted,
    and each finished batch goes to the store on disk: memory for one batch, whatever the number of identities.
    :meth:`all_masks` reads every mask either way; the masks are the same bit for bit.

    GPU options (off by default; see the README's "Scaling"): ``channels_last`` runs the surrogate in NHWC
    memory format (faster convolutions on tensor cores), ``compile`` runs it through ``torch.compile``
    (a one-off compilation, then fused kernels; not with DFANet's dropout hooks). Mixed precision is
    Lightning's ``trainer.precision=bf16-mixed`` / ``16-mixed``. Each changes rounding in the surrogate, so
    the masks differ bit-wise from the float32 ones (sign steps amplify any difference).
    """

    def __init__(self, surrogate: nn.Module | Sequence[nn.Module], method: Method, attack: SignAttack,
                 num_identities: int, image_size: int = 112, channels_last: bool = False, compile: bool = False,
                 transforms: RandomTransforms | None = None, ensemble: str = "distance", budget: Budget | None = None,
                 init_masks: torch.Tensor | None = None, dfanet_min_cosine: float = 0.9,
                 mask_store: MaskStore | None = None):
        super().__init__()
        if ensemble not in ENSEMBLE_WEIGHTINGS:
            raise ConfigError(f"crafting.ensemble must be one of {', '.join(ENSEMBLE_WEIGHTINGS)}, got {ensemble!r}")
        if init_masks is not None and tuple(init_masks.shape) != (num_identities, 3, image_size, image_size):
            raise ConfigError(f"initial masks of shape {tuple(init_masks.shape)} do not fit {num_identities} "
                              f"identities of {image_size}x{image_size}")
        self.transforms = transforms if transforms else None
        self.ensemble, self.budget, self.dfanet_min_cosine = ensemble, budget or Budget(), float(dfanet_min_cosine)
        self.init_masks = init_masks
        self._sites: list | None = None  # DFANet's dropout sites, per surrogate (chosen on the first batch)
        if compile and attack.dropout > 0:
            raise ConfigError("crafting.compile=true does not work with DFANet's dropout hooks: use "
                              "crafting.compile=false with attack=dfanet_mi")
        self.automatic_optimization = False
        members = list(surrogate) if isinstance(surrogate, (list, tuple, nn.ModuleList)) else [surrogate]
        if not members:
            raise ConfigError("no surrogate to craft with: choose one or more, e.g. surrogate=sface")
        self.surrogates = nn.ModuleList(members)
        self.method, self.attack = method, attack
        # each surrogate its own copy of the method (a convex hull warm-starts from its own previous solve)
        self._methods = [method] + [copy.deepcopy(method) for _ in members[1:]]
        self.channels_last, self.compile = bool(channels_last), bool(compile)
        for p in self.surrogates.parameters():
            p.requires_grad_(False)
        if mask_store is not None and tuple(mask_store.shape) != (num_identities, 3, image_size, image_size):
            raise ConfigError(f"a mask store of shape {tuple(mask_store.shape)} does not fit {num_identities} "
                              f"identities of {image_size}x{image_size}")
        self.mask_store = mask_store
        # the learnable parameter: every identity's mask, or only the current batch's when a store keeps the rest
        rows = num_identities if mask_store is None else 0
        self.masks = nn.Parameter(torch.zeros(rows, 3, image_size, image_size))
        self._state: AttackState | None = None
        self.__dict__["_networks"] = members  # what computes features (compiled in on_fit_start); not submodules

    def all_masks(self) -> torch.Tensor:
        """Every identity's mask (I, 3, H, W): the parameter itself, or the mask store's memory-mapped file."""
        return self.masks.detach() if self.mask_store is None else self.mask_store.masks

    def _batch_masks(self, batch: dict) -> torch.Tensor | None:
        """The parameter rows of this batch (a view), or None when its ``ids`` are not one contiguous range."""
        ids = batch["ids"]
        if "rows" in batch:  # IdentityChunks: a contiguous range, given as host ints
            (first, stop), contiguous = batch["rows"], True
        else:
            first, stop = int(ids[0]), int(ids[0]) + len(ids)
            contiguous = torch.equal(ids, torch.arange(first, stop, device=ids.device))
        if self.mask_store is not None:  # the parameter is the batch
            if not contiguous:
                raise ValueError("a mask store needs batches of consecutive identities (IdentityChunks)")
            if self.masks.shape[0] != stop - first:
                self.masks.data = self.masks.new_zeros(stop - first, *self.masks.shape[1:])
            return self.masks.data
        return self.masks.data[first:stop] if contiguous else None

    def _store_batch(self, batch: dict) -> None:
        """With a mask store: the finished batch's masks go to the store."""
        if self.mask_store is not None:
            first = batch["rows"][0] if "rows" in batch else int(batch["ids"][0])
            self.mask_store.write(first, self.masks.detach().float().cpu())

    def _log_loss(self, losses: torch.Tensor, batch_idx: int, batch_size: int) -> None:
        """Log the batch's mean loss on Lightning's logging steps, when a logger or the progress bar shows it."""
        trainer = self._trainer
        if trainer is None or not trainer.log_every_n_steps or (batch_idx + 1) % trainer.log_every_n_steps:
            return
        if trainer.loggers or trainer.progress_bar_callback is not None:
            self.log("craft/loss", losses.mean(), prog_bar=True, batch_size=batch_size)

    @property
    def surrogate(self) -> nn.Module:
        """The surrogate when there is one (the first of an ensemble)."""
        return self.surrogates[0]

    def setup(self, stage: str) -> None:
        """From here to :meth:`teardown` (also after an error) freed memory stays with the process: each step
        reuses the previous step's instead of faulting it in again (:mod:`opom.allocator`)."""
        self._memory = contextlib.ExitStack()
        self._memory.enter_context(reuse_freed_memory())

    def teardown(self, stage: str) -> None:
        memory, self._memory = getattr(self, "_memory", None), None
        if memory is not None:
            memory.close()

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.surrogates.to(memory_format=torch.channels_last)
        if self.compile and self._networks[0] is self.surrogates[0]:
            self.__dict__["_networks"] = [torch.compile(m) for m in self.surrogates]

    def train(self, mode: bool = True):
        super().train(mode)
        self.surrogates.eval()
        return self

    def configure_optimizers(self):
        return None  # the attack in ``training_step`` updates the masks

    def _network_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, N, 3, H, W) as the surrogates' batch (B*N, 3, H, W), in their memory format."""
        x = images.flatten(0, 1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _embed(self, network: nn.Module, x: torch.Tensor, images: int) -> torch.Tensor:
        """One surrogate's L2-normalised features (B, N, D) of its batch ``x`` (:meth:`_network_input`) of
        ``images`` per identity."""
        return F.normalize(network(x), dim=1).unflatten(0, (-1, images))

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every surrogate's L2-normalised features (B, N, D_k)."""
        x = self._network_input(images)
        return [self._embed(network, x, images.shape[1]) for network in self._networks]

    def _loss_and_grad(self, seen: torch.Tensor, clean: list[torch.Tensor], iteration: int,
                       x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-identity objective (B,) and its gradient w.r.t. ``x_adv``, from the images the surrogates see
        (``seen``: ``x_adv`` or its random transforms): one surrogate's loss, or the ensemble's combination (see
        the class docstring). The members run one after the other — forward, loss and input gradient — so only
        one member's graph is in memory at a time."""
        count, x = len(self._networks), self._network_input(seen)
        losses = grad = None
        for k, (network, method, anchors) in enumerate(zip(self._networks, self._methods, clean, strict=True)):
            adv = self._embed(network, x, seen.shape[1])
            term = method.loss(adv, anchors, iteration)
            if count > 1 and self.ensemble == "distance":
                term = term * (adv.shape[-1] / count)
            # a shared transform's graph serves every member: keep it until the last one
            (g,) = torch.autograd.grad(term.sum(), x_adv, retain_graph=k < count - 1 and seen is not x_adv)
            if count > 1 and self.ensemble == "gradient":
                g = g / g.abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-12)
                term = term / count
            term = term.detach()
            losses, grad = (term, g) if grad is None else (losses + term, grad.add_(g))
        return losses, grad

    def training_step(self, batch: dict, batch_idx: int):
        ids, iteration = batch["ids"], int(batch["iteration"])
        people = batch.get("identities", ids)  # positions in the whole protection set (differs in a shard)
        if not self.method.crafts:  # random noise: one draw per identity, seeded by its index
            shape, seed = tuple(batch["images"].shape[2:]), self.attack.seed * 1_000_003
            noise = torch.stack([uniform_noise(shape, self.attack.eps, seed + int(i)) for i in people])
            budget = self.budget.for_images(batch["images"].float() / 255.0)
            noise = budget.apply_(noise, self.attack.eps).to(self.masks)
            rows = self._batch_masks(batch)
            if rows is None:
                self.masks.data[ids] = noise
            else:
                rows.copy_(noise)
            self._store_batch(batch)
            return None
        if iteration == 0:  # the clean images are converted once per batch and kept in the attack state
            init = None if self.init_masks is None else self.init_masks[ids]
            x = batch["images"].to(self.masks.dtype) / 255.0
            self._state = self.attack.init_state(x, init, self.budget.for_images(x))
            seed = batch_seed(self.attack.seed, int(people[0]))  # draws depend on this batch only, not on the job
            if self.transforms is not None:
                self.transforms.reseed(seed)
            if self.attack.dropout > 0:
                if self._sites is None:
                    self._sites = [select_dfanet_sites(m, self._state.x[:1].flatten(0, 1), self.attack.dropout,
                                                       self.dfanet_min_cosine) for m in self.surrogates]
                torch.manual_seed(seed)
        state = self._state
        sites = [site for member in self._sites for site in member] if self._sites else []
        with torch.enable_grad(), feature_dropout(sites, self.attack.dropout):
            if state.clean_features is None or self.attack.recompute_clean:
                with torch.no_grad():
                    state.clean_features = self._features(state.x)
            x_adv = state.x_adv.detach().requires_grad_(True)
            seen = x_adv if self.transforms is None else self.transforms(x_adv.flatten(0, 1)).view_as(x_adv)
            losses, grad = self._loss_and_grad(seen, state.clean_features, iteration, x_adv)
        with torch.no_grad():
            rows = self._batch_masks(batch)
            masks = self.attack.update(state, grad, out=rows)
            if rows is None:
                self.masks.data[ids] = masks
        self._log_loss(losses, batch_idx, len(ids))
        if iteration == self.attack.iterations - 1:
            self._state = None
            self._store_batch(batch)
        return None
