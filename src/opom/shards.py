"""Identity shards: split one crafting job over processes, GPUs or nodes, then merge the mask files.

Crafting is independent per identity (seeded per identity, the surrogate frozen in eval mode), so a job
can craft any subset of the protection set and the union equals the single-process result. A shard is a
contiguous block of whole batches (``identities_per_batch``): shard ``index`` of ``count`` crafts batches
``[index * C // count, (index + 1) * C // count)`` of the ``C`` batches, so every batch — and every mask —
is exactly the one the single-process job crafts. Each shard job writes its own ``masks.safetensors``
(the shard and its identity range are in the file's config metadata); :func:`merge_mask_files` (the
``opom-merge-masks`` command, or the :class:`ShardMerge` Hydra callback at the end of a multirun) checks
that the shards fit together and writes one file, identities in order.

    python run.py -m hydra/launcher=joblib shard.count=2 'shard.index=range(2)'   # two local processes
    opom-merge-masks merged.safetensors multirun/<date>/<time>                  # (done by ShardMerge too)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra.experimental.callback import Callback
from safetensors import safe_open

from opom import mask_store
from opom.errors import ConfigError, UserError
from opom.masks import MaskSet, load_masks, mask_metadata

if TYPE_CHECKING:  # Lightning, which opom.data.protection imports, slows the merge command's start a lot
    from opom.data.protection import ProtectionSet

log = logging.getLogger("opom")

MASK_FILE = "masks.safetensors"
# config keys that may differ between the shards of one job (where each job writes, which shard it is)
_PER_JOB_KEYS = ("shard", "paths", "logger")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``; ``count == 1`` is the whole protection set."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if int(self.count) < 1:
            raise ConfigError(f"shard.count must be >= 1, got {self.count}")
        if not 0 <= int(self.index) < int(self.count):
            raise ConfigError(f"shard.index must be in 0..{int(self.count) - 1} for shard.count={self.count}, "
                              f"got {self.index}")

    @classmethod
    def from_config(cls, cfg) -> Shard:
        return cls(int(cfg.get("index", 0)), int(cfg.get("count", 1))) if cfg else cls()

    def bounds(self, num_identities: int, identities_per_batch: int) -> tuple[int, int]:
        """The identity range ``[start, stop)`` of this shard: a block of whole batches."""
        batches = -(-num_identities // identities_per_batch)
        if self.count > batches:
            raise ConfigError(f"shard.count={self.count} is more than the {batches} batches of "
                              f"{identities_per_batch} identities in this protection set ({num_identities} people): "
                              f"lower shard.count to at most {batches}, or lower identities_per_batch")
        first, last = self.index * batches // self.count, (self.index + 1) * batches // self.count
        return first * identities_per_batch, min(last * identities_per_batch, num_identities)

    def select(self, protection: ProtectionSet, identities_per_batch: int) -> tuple[ProtectionSet, dict]:
        """This shard's people (views, no copies) and its description for the mask file's metadata."""
        total = protection.num_identities
        start, stop = self.bounds(total, identities_per_batch)
        info = {"index": self.index, "count": self.count, "start": start, "stop": stop, "total": total}
        if (start, stop) == (0, total):
            return protection, info
        from opom.data.protection import ProtectionSet

        part = ProtectionSet(protection.names[start:stop], protection.mask_images[start:stop],
                             protection.test_images[start:stop], protection.distractors)
        return part, info


def shard_trainer(trainer: dict, shard: Shard, cuda_devices: int | None = None) -> dict:
    """Trainer settings of one shard: with several GPUs and one device per job, shard k uses GPU k mod #GPUs.

    (Joblib runs the shards of a node as separate processes; without this they would all use GPU 0.)
    """
    cuda_devices = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    trainer = dict(trainer)
    if (shard.count > 1 and cuda_devices > 1 and trainer.get("devices", 1) in (1, "1")
            and trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda")):
        trainer["accelerator"], trainer["devices"] = "gpu", [shard.index % cuda_devices]
    return trainer


# ----------------------------------------------------------------------------------------------- merging
def _shard_info(ms: MaskSet, source: str) -> dict:
    info = (ms.extra.get("config") or {}).get("shard")
    if not isinstance(info, dict) or not {"index", "count", "start", "stop", "total"} <= set(info):
        raise UserError(f"{source} is not a shard's mask file (no shard range in its metadata; was it written "
                        f"by run.py with shard.count > 1?)")
    if info["stop"] - info["start"] != len(ms.identities):
        raise UserError(f"{source}: its shard range {info['start']}..{info['stop']} does not match its "
                        f"{len(ms.identities)} masks")
    return info


def _job_key(ms: MaskSet) -> str:
    """What must agree between the shards of one job: the crafting settings, not where each shard ran."""
    config = {k: v for k, v in (ms.extra.get("config") or {}).items() if k not in _PER_JOB_KEYS}
    blob = json.dumps([ms.surrogate, ms.method, ms.attack, ms.eps, ms.image_size, ms.template,
                       [list(p) for p in ms.template_points], config], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def merge_mask_sets(parts: list[tuple[str, MaskSet]]) -> MaskSet:
    """One mask set from every shard of one job (any order): identities in the single-process order.

    Raises :class:`UserError` naming the problem when shards are missing, duplicated, from different jobs
    (other method, surrogate, attack settings or dataset) or do not tile the protection set.
    """
    if not parts:
        raise UserError("no mask files to merge")
    infos = [(_shard_info(ms, src), src, ms) for src, ms in parts]
    keys = {_job_key(ms) for _, _, ms in infos}
    if len(keys) > 1:
        raise UserError(f"these {len(parts)} mask files come from different jobs (method, surrogate, attack, dataset "
                        f"or other settings differ): merge the shards of one job at a time")
    count, total = infos[0][0]["count"], infos[0][0]["total"]
    seen: dict[int, str] = {}
    for info, src, _ in infos:
        if info["count"] != count or info["total"] != total:
            raise UserError(f"{src} is shard {info['index']} of {info['count']} ({info['total']} people) but "
                            f"{infos[0][1]} is one of {count} ({total} people)")
        if info["index"] in seen:
            raise UserError(f"shard {info['index']} appears twice: {seen[info['index']]} and {src}")
        seen[info["index"]] = src
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise UserError(f"missing shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {count}: "
                        f"run them (shard.index=...) and merge again")
    infos.sort(key=lambda t: t[0]["index"])
    expected = 0
    for info, src, _ in infos:
        if info["start"] != expected:
            raise UserError(f"{src} starts at identity {info['start']}, expected {expected}: the shards were "
                            f"made with different identities_per_batch")
        expected = info["stop"]
    if expected != total:
        raise UserError(f"the shards cover {expected} of {total} people")
    first = infos[0][2]
    config = dict(first.extra.get("config") or {})
    config["shard"] = {"index": 0, "count": 1, "start": 0, "stop": total, "total": total}
    extra = {**first.extra, "config": config, "merged_from": [src for _, src, _ in infos]}
    return MaskSet(masks=torch.cat([ms.masks for _, _, ms in infos]),
                   identities=[name for _, _, ms in infos for name in ms.identities],
                   surrogate=first.surrogate, method=first.method, attack=first.attack, eps=first.eps,
                   image_size=first.image_size, template=first.template, template_points=first.template_points,
                   version=first.version, extra=extra)


def _load(path: Path) -> MaskSet:
    """A shard file's metadata; its masks stay on disk (a meta tensor of their shape)."""
    try:
        return load_masks(path, lazy=True)
    except (UserError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file: one clear line
        raise UserError(f"{str(path)!r} is not a readable mask file ({type(err).__name__}: {err})") from err


def find_mask_files(inputs: list[str | Path], exclude: Path | None = None) -> list[Path]:
    """Mask files named directly, and every ``masks.safetensors`` below the named folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(item.rglob(MASK_FILE))
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"{str(item)!r} does not exist")
    if exclude is not None:
        files = [f for f in files if f.resolve() != exclude.resolve()]
    return files


def save_merged(out: str | Path, merged: MaskSet) -> Path:
    """Write the merged masks from the shard files (``merged.extra['merged_from']``, in order), a chunk at a time,
    atomically: memory for one chunk however many masks the job crafted."""
    def chunks():
        for src in merged.extra["merged_from"]:
            with safe_open(src, framework="pt") as f:
                part = f.get_slice("masks")
                count, row = part.get_shape()[0], 4 * math.prod(part.get_shape()[1:])
                step = max(1, mask_store.CHUNK_BYTES // row)
                for start in range(0, count, step):
                    yield part[start:start + step]

    return mask_store.write_safetensors(out, mask_metadata(merged), tuple(merged.masks.shape), chunks())


def merge_mask_files(inputs: list[str | Path], out: str | Path) -> MaskSet:
    """Merge the shard mask files (or folders holding them) into ``out``, written atomically; returns the merged
    set's description (its masks are in ``out``: the returned tensor is on the meta device, without data)."""
    out = Path(out)
    files = find_mask_files(inputs, exclude=out)
    merged = merge_mask_sets([(str(f), _load(f)) for f in files])
    save_merged(out, merged)
    return merged


def _group_name(ms: MaskSet) -> str:
    return f"merged-{ms.method}-{ms.attack}-{ms.surrogate}-eps{ms.eps:g}"


def merge_sweep(sweep_dir: str | Path) -> list[Path]:
    """Merge every complete set of shards under a multirun folder into ``<sweep>/merged/masks.safetensors``
    (``merged-<method>-<attack>-<surrogate>-eps<eps>/`` when the sweep holds several jobs' shards).

    Files that are not shards are ignored; incomplete jobs are reported and left for ``opom-merge-masks``.
    """
    sweep_dir = Path(sweep_dir)
    groups: dict[str, list[tuple[str, MaskSet]]] = {}
    for f in find_mask_files([sweep_dir]):
        if f.parent.name.startswith("merged"):
            continue
        ms = _load(f)
        info = (ms.extra.get("config") or {}).get("shard") or {}
        if int(info.get("count", 1)) > 1:
            groups.setdefault(_job_key(ms), []).append((str(f), ms))
    names = {key: _group_name(parts[0][1]) for key, parts in groups.items()}
    written = []
    for key, parts in groups.items():
        name = names[key] if list(names.values()).count(names[key]) == 1 else f"{names[key]}-{key}"
        target = sweep_dir / ("merged" if len(groups) == 1 else name) / MASK_FILE
        try:
            merged = merge_mask_sets(parts)
        except UserError as err:
            log.warning("not merged (%s): %s", target.parent.name, err)
            continue
        save_merged(target, merged)
        log.info("merged %d shards (%d masks) into %s", len(parts), len(merged.identities), target)
        written.append(target)
    return written


class ShardMerge(Callback):
    """Hydra callback: at the end of a multirun, merge the shards' mask files (see :func:`merge_sweep`)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        for path in merge_sweep(config.hydra.sweep.dir):
            print(f"merged masks: {path}\n  test them: python evaluate.py masks={path}")


def main(argv: list[str] | None = None) -> int:
    """``opom-merge-masks OUT INPUT...``: merge shard mask files (or folders holding them) into OUT."""
    from opom.cli_errors import friendly_errors

    ap = argparse.ArgumentParser(prog="opom-merge-masks", description=main.__doc__.split(": ", 1)[1])
    ap.add_argument("out", type=Path, help="the merged masks.safetensors to write")
    ap.add_argument("inputs", nargs="+", help="shard mask files, or folders searched for masks.safetensors")
    args = ap.parse_args(argv)
    with friendly_errors():
        merged = merge_mask_files(args.inputs, args.out)
        print(f"wrote {args.out}: {len(merged.identities)} masks from "
              f"{len(merged.extra['merged_from'])} shards")
    return 0
