"""The crafter's speed options (channels_last, mixed precision, torch.compile): speed and effect on results.

    python experiments/benchmarks/bench_crafting_options.py [--quick] [--out FILE.md]

Every option crafts the same people (the default synthetic world's first ``--identities``) with the default
convex hull + FIM on the trained small_resnet surrogate; each run's masks are compared with the float32 ones
(share of identical mask pixels, mean absolute difference) and tested like the pipeline does: PSR@1 on the
surrogate (white-box) and on the black box ``resnet_cosface`` (500 distractors). An option may stay on by
default only if the masks are the same; one that changes PSR@1 by more than the noise of this test set is
reported as such. On this CPU machine the speed columns say nothing about GPUs (no device was available):
channels_last and compile target GPU tensor cores, and bf16 has no fast CPU kernels here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch
from benchlib import EpochTimer, default_world, machine_header, quiet, subset
from hydra.utils import instantiate
from omegaconf import OmegaConf

from opom.attack import FIM
from opom.data.protection import ProtectionDataModule
from opom.evaluation.transfer import evaluate_model
from opom.methods import METHODS
from opom.models.zoo import build_face_model
from opom.module import MaskCrafter

OPTIONS = {  # name: (MaskCrafter keyword arguments, trainer precision)
    "float32 (default)": ({}, "32-true"),
    "channels_last": ({"channels_last": True}, "32-true"),
    "bf16-mixed": ({}, "bf16-mixed"),
    "torch.compile": ({"compile": True}, "32-true"),
}


def craft(surrogate, people, options: dict, precision: str) -> tuple[float, float, torch.Tensor]:
    """(seconds of the first fit, seconds of a second fit of the same module, masks); the first fit pays any
    compilation and warm-up, the second one is the steady speed (both craft the same masks)."""
    module = MaskCrafter(surrogate, METHODS["convex_hull"](), FIM(), people.num_identities, **options)
    times = []
    for _ in range(2):
        timer = EpochTimer()
        trainer = L.Trainer(max_epochs=1, logger=False, callbacks=[timer], enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                            precision=precision)
        start = time.perf_counter()
        trainer.fit(module, datamodule=ProtectionDataModule(people, people.num_identities, module.attack.iterations))
        times.append(time.perf_counter() - start)
    masks = module.masks.detach().float().clone()
    if options.get("channels_last"):
        surrogate.to(memory_format=torch.contiguous_format)
    return times[0], times[1], masks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="no torch.compile (its compilation takes minutes)")
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("crafting_options.md"))
    args = ap.parse_args(argv)
    quiet()
    cfg, protection, surrogate = default_world()
    people = subset(protection, args.identities)
    dataset = instantiate(cfg.dataset)
    blackbox = build_face_model(OmegaConf.to_container(cfg.blackbox.resnet_cosface, resolve=True), dataset,
                                OmegaConf.to_container(cfg.fr_train, resolve=True), cfg.paths.cache_dir)
    rows, notes, reference, names, steady_times = [], [], None, [], []
    for name, (options, precision) in OPTIONS.items():
        if args.quick and options.get("compile"):
            continue
        first, steady, masks = craft(surrogate, people, options, precision)
        names.append(name)
        steady_times.append(steady)
        if reference is None:
            reference, psr_ref = masks, None
        same = float((masks == reference).float().mean())
        diff = float((masks - reference).abs().mean()) * 255
        psr_white = evaluate_model(surrogate, people, masks, ks=(1,))["psr_top1"]
        psr_black = evaluate_model(blackbox, people, masks, ks=(1,))["psr_top1"]
        if psr_ref is None:
            psr_ref = (psr_white, psr_black)
        else:
            notes.append(f"- {name}: PSR@1 {psr_white - psr_ref[0]:+.3f} white-box, {psr_black - psr_ref[1]:+.3f} "
                         f"black-box against float32; {1 - same:.1%} of the mask pixels differ.")
        rows.append(f"| {name} | {first:.1f} | {steady:.1f} | {same:.4f} | {diff:.3f} | {psr_white:.3f} | "
                    f"{psr_black:.3f} |")
        print(rows[-1], flush=True)
    summary = "**Steady crafting time against float32: " + ", ".join(
        f"{n} {t / steady_times[0]:.2f}x" for n, t in zip(names[1:], steady_times[1:], strict=True)) + ".**\n\n"
    text = (machine_header("Crafter speed options: speed and effect on the masks") + "\n" + summary +
            f"{args.identities} identities x 10 images, convex hull + FIM (16 iterations), small_resnet "
            "(ArcFace, trained), CPU only (no GPU was available: GPU speed-ups are not measured here). "
            "Each option crafts twice with the same crafter: the first run pays any compilation, the second "
            "shows the steady speed (same masks). Masks are compared with the float32 masks; PSR@1 against "
            "500 distractors with "
            f"{people.test_images.shape[1]} test photos per person.\n\n"
            "| option | first run s | second run s | identical mask pixels | mean abs mask "
            "difference (grey levels) | PSR@1 white-box | PSR@1 resnet_cosface |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n"
            "Changes against float32 (one PSR@1 step on this test set is "
            f"{1 / (people.num_identities * people.test_images.shape[1]):.4f}):\n\n" + "\n".join(notes) + "\n\n"
            "Every option changes the rounding inside the surrogate, and the attack's sign steps turn such "
            "differences into different masks, so none is bit-compatible with float32 crafting; all stay off by "
            "default (`crafting.channels_last`, `crafting.compile`, `trainer.precision`).\n")
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
