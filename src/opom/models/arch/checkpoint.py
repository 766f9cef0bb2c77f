"""Reading published face-recognition checkpoints: weights only, wrappers removed, strict key matching.

Every architecture module in :mod:`opom.models.arch` loads through :func:`load_into`, so a checkpoint that
does not fit fails the same way everywhere: a :class:`CheckpointError` (a ``ValueError``) naming the
architecture that was expected, a few missing / unexpected / mis-shaped keys, and — when the keys look like
another known family — which one they look like.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from opom.errors import UserError

StateDict = dict[str, torch.Tensor]

# containers that training scripts wrap a state dict in, tried in this order
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "backbone")
_DATAPARALLEL_PREFIX = "module."
_SHOWN = 5  # keys listed per category in error messages

# a key that only one family has -> the family's name (for "this looks like ..." hints)
_FINGERPRINTS = (
    ("layer1.0.bn1.weight", "an insightface arcface_torch IResNet (iresnet18/34/50/100/200)"),
    ("input_layer.0.weight", "a face.evoLVe IR / IR-SE network (IR_50, IR_SE_50, ...)"),
    ("conv_sep.layers.0.weight", "an insightface arcface_torch MobileFaceNet (mbf)"),
    ("conv2d_1a.conv.weight", "a facenet-pytorch InceptionResnetV1"),
    ("stem.0.weight", "one of opom's small synthetic-world backbones"),
)


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or that does not fit the architecture it is loaded into."""


class MissingCheckpointError(UserError, FileNotFoundError):
    """A checkpoint file that is not where it should be (also a ``FileNotFoundError``)."""


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files begin with an 8-byte little-endian header length followed by a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") < path.stat().st_size


def _all_tensors(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: object, origin: str = "checkpoint") -> StateDict:
    """The tensor mapping inside ``obj``: unwraps ``{"state_dict": ...}``-style containers, strips ``module.``.

    Non-tensor entries next to the weights (an ``epoch`` counter, say) are dropped.
    """
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{origin}: expected a state dict (a mapping of names to tensors), found "
                              f"{type(obj).__name__}. Save weights with torch.save(model.state_dict(), path)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{origin}: holds no tensors (top-level keys: {list(obj)[:_SHOWN]})")
    while all(k.startswith(_DATAPARALLEL_PREFIX) for k in state):
        state = {k[len(_DATAPARALLEL_PREFIX):]: v for k, v in state.items()}
    return state


def load_state_dict_file(path: str | Path) -> StateDict:
    """Read a state dict without running pickled code.

    safetensors files go through ``safetensors.torch.load_file``; anything else through
    ``torch.load(path, map_location="cpu", weights_only=True)``. A ``{"state_dict": ...}`` wrapper and a
    leading DataParallel ``module.`` prefix are removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingCheckpointError(f"checkpoint {str(path)!r} does not exist; give the path of a .pth/.pt "
                                     f"state dict or a .safetensors file")
    if _looks_like_safetensors(path):
        return unwrap_state_dict(load_file(str(path)), str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refusing to load {str(path)!r}: it holds pickled objects beyond plain weights, "
                              f"which could run code. Re-save its state_dict (torch.save(model.state_dict(), ...)) "
                              f"or convert it to .safetensors") from err
    return unwrap_state_dict(obj, str(path))


def describe_keys(keys) -> str | None:
    """Which known checkpoint family a key set looks like, or None."""
    keys = set(keys)
    return next((name for key, name in _FINGERPRINTS if key in keys), None)


def looks_like(state, subject: str = "Its") -> str:
    """`` Its keys look like <family>.`` for error messages (empty when no family matches)."""
    looks = describe_keys(state)
    return f" {subject} keys look like {looks}." if looks else ""


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (", ..." if len(items) > _SHOWN else "")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str,
                     origin: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the keys and shapes of ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or mis_shaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (e.g. {_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {_examples(unexpected)})")
    if mis_shaped:
        parts.append(f"{len(mis_shaped)} shape mismatch(es), checkpoint vs model (e.g. {_examples(mis_shaped)})")
    raise CheckpointError(f"{origin} does not fit the {arch} architecture: {'; '.join(parts)}."
                          f"{looks_like(state, 'Its')}")


def read_state(source: str | Path | Mapping) -> tuple[StateDict, str]:
    """``(state dict, description for messages)`` from a checkpoint path or an in-memory state dict.

    The tensors returned belong to the caller: those of an in-memory state dict are copied.
    """
    if isinstance(source, Mapping):
        return {k: v.detach().clone() for k, v in unwrap_state_dict(source).items()}, "state dict"
    return load_state_dict_file(source), f"checkpoint {str(source)!r}"


def build_empty(build: Callable[..., nn.Module], *args, **kwargs) -> nn.Module:
    """``build(*args, **kwargs)`` on the meta device: no memory, no initialisation — for :func:`load_into`."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def _is_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in model.state_dict().values())


def load_into(model: nn.Module, source: str | Path | Mapping, arch: str,
              remap: Callable[[StateDict], StateDict] | None = None, origin: str | None = None) -> nn.Module:
    """Load ``source`` (a checkpoint path or a state dict) into ``model`` strictly; return ``model`` in eval mode.

    ``remap`` rewrites the key layout first (e.g. a dropout variant's shifted indices). BatchNorm
    ``num_batches_tracked`` counters — unused at inference, and absent from checkpoints written by old
    torch versions or converters — are taken from the model (zero on a meta model) when the checkpoint lacks
    them; every other key must match in name and shape. ``origin`` names the source in error messages.

    A ``model`` built on the meta device (:func:`build_empty`) skips initialisation: the checkpoint's tensors
    become its parameters and buffers (cast to the model's float dtype; not copied — pass tensors you own).
    """
    if isinstance(source, Mapping):
        state, source_name = unwrap_state_dict(source), "state dict"
    else:
        state, source_name = load_state_dict_file(source), f"checkpoint {str(source)!r}"
    origin = origin or source_name
    if remap is not None:
        state = remap(state)
    own = model.state_dict()
    meta = _is_meta(model)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long) if meta else value.clone()
    check_state_dict(model, state, arch, origin)
    if not meta:
        model.load_state_dict(state, strict=True)
        return model.eval()
    for key, value in own.items():
        if value.is_floating_point() and state[key].dtype != value.dtype:
            state[key] = state[key].to(value.dtype)
    model.load_state_dict(state, strict=True, assign=True)
    left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{arch}: {', '.join(left[:_SHOWN])} not set by the checkpoint (meta tensors left)")
    return model.eval()
