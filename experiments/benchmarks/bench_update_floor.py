"""How close crafting can come to the bare surrogate pass on this machine: the floor of the attack update.

    python experiments/benchmarks/bench_update_floor.py [--rounds R] [--modes wall,cpu1] [--out FILE.md]

``bench_crafting.py`` measures crafting against the bare ``autograd.grad(surrogate(x).sum(), x)`` of the default
surrogate (16 identities x 10 images; target >= 0.95). Two costs of a crafting step are not the crafter's to
remove: the clean features (one no-grad forward per batch, which the method needs) and the attack update, which
must at least read the input gradient and write the next perturbed images. This script measures, on the same
batch and interleaved round by round (the VM's speed drifts):

- ``bare``: the bare forward + input gradient of the default surrogate (the reference of bench_crafting);
- ``clean / step``: the clean features' no-grad forward, spread over the attack's iterations (16 for FIM);
- ``update``: the FIM update as the crafter runs it (:meth:`opom.attack.SignAttack.update`, eager, in place);
- ``fused``: the same arithmetic as one ``torch.compile`` function (its masks checked equal to the eager ones bit
  for bit every round; ``n/a`` where torch.compile does not work, e.g. without a C++ compiler);
- ``traffic floor``: one pass that reads the gradient and the clean images and writes the perturbed images (any
  update moves at least these bytes; the fused kernel reads the images twice more).

``ceiling`` = bare / (bare + clean per step + the faster of the two updates): the ratio a crafter could reach
if its projection, Lightning's loop, logging and bookkeeping cost nothing. Below 0.95 means the target cannot be
met on this machine with this surrogate whatever the loop does.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from benchlib import clock_of, default_world, interleaved, machine_header, median, parse_modes, quiet, subset

from opom.attack import FIM


def fused_fim(step: float, eps: float):
    """FIM's update (:class:`opom.attack.FIM`, plain budget) written as one functional graph for torch.compile."""

    def update(x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor) -> None:
        sign = grad.mean(dim=1, keepdim=True).sign()
        mask = ((x_adv + sign * step) - x).mean(dim=1).clamp(-eps, eps)
        out.copy_(mask)
        x_adv.copy_((x + mask.unsqueeze(1)).clamp(0, 1))

    try:
        compiled = torch.compile(update, dynamic=False, fullgraph=True)
        probe = torch.zeros(1, 2, 3, 4, 4)
        compiled(probe.clone(), probe, probe, torch.empty(1, 3, 4, 4))
        return compiled
    except Exception as err:  # no C++ compiler, unsupported platform: report n/a
        print(f"torch.compile unavailable ({type(err).__name__}): fused update not measured", file=sys.stderr)
        return None


def timed(clock, fn) -> float:
    start = clock()
    fn()
    return 1000 * (clock() - start)


def measure(surrogate, images: torch.Tensor, rounds: int, mode: str) -> dict[str, float | bool | None]:
    attack = FIM()
    x = images.float() / 255.0
    eager, fused_state = attack.init_state(x), attack.init_state(x)
    grad = torch.randn_like(x)
    masks, fused_masks = torch.empty(x.shape[0], *x.shape[2:]), torch.empty(x.shape[0], *x.shape[2:])
    fused = fused_fim(attack.step, attack.eps)
    flat = x.flatten(0, 1)
    leaf = flat.clone().requires_grad_(True)
    floor_out = torch.empty_like(x)
    same = True

    def bare():
        torch.autograd.grad(surrogate(leaf).sum(), leaf)

    def clean():
        with torch.no_grad():
            surrogate(flat)

    def update():
        attack.update(eager, grad, out=masks)

    def fused_update():
        fused(fused_state.x_adv, fused_state.x, grad, fused_masks)

    def floor():
        torch.add(x, grad, out=floor_out)

    def new_round():  # both updates took one step from equal states with the same gradient: check, draw the next
        nonlocal same
        if fused is not None:
            same = same and torch.equal(masks, fused_masks) and torch.equal(eager.x_adv, fused_state.x_adv)
        grad.normal_()

    passes = [bare, clean, update, floor] + ([fused_update] if fused is not None else [])
    with clock_of(mode) as clock:
        for f in passes:  # warm-up
            f()
        rows = interleaved(*[lambda f=f: timed(clock, f) for f in passes], rounds=rounds, before_round=new_round)
        new_round()  # the last round's check
    result = {name: median(r[i] for r in rows) for i, name in enumerate(("bare", "clean", "update", "floor"))}
    result["clean"] /= attack.iterations
    result["fused"] = median(r[4] for r in rows) if fused is not None else None
    result["same"] = same if fused is not None else None
    best = min(result["update"], result["fused"] if result["fused"] is not None else math.inf)
    result["ceiling"] = result["bare"] / (result["bare"] + result["clean"] + best)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--modes", default="wall,cpu1", help="comma-separated clocks: wall, cpu1")
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("update_floor.md"))
    args = ap.parse_args(argv)
    modes = parse_modes(ap, args.modes)
    quiet()
    _, protection, surrogate = default_world()
    surrogate.eval().requires_grad_(False)  # frozen, as the crafter runs it: the bare pass is input-gradient only
    images = subset(protection, args.identities).mask_images
    rows, ceilings = [], []
    for mode in modes:
        r = measure(surrogate, images, args.rounds, mode)
        ceilings.append(f"{r['ceiling']:.3f} ({mode})")
        fused = "n/a" if r["fused"] is None else f"{r['fused']:.2f}"
        same = "n/a" if r["same"] is None else ("yes" if r["same"] else "NO")
        rows.append(f"| {mode} | {r['bare']:.1f} | {r['clean']:.2f} | {r['update']:.2f} | {fused} | {same} | "
                    f"{r['floor']:.2f} | **{r['ceiling']:.3f}** |")
        print(rows[-1], flush=True)
    text = (machine_header("The attack update's floor and the crafting ratio's ceiling") + "\n"
            f"**Ceiling of crafting / bare forward + backward on this machine: {' / '.join(ceilings)} "
            "(target >= 0.95), with nothing but the clean features and the update beyond the bare pass.**\n\n"
            f"Default surrogate (small_resnet), {args.identities} identities x {images.shape[1]} images, FIM "
            f"({FIM().iterations} iterations); ms per step, median of {args.rounds} interleaved rounds. `ceiling` = "
            "bare / (bare + clean per step + the faster update): the best ratio of bench_crafting.py if the "
            "projection, Lightning's loop, logging and bookkeeping cost nothing. See the script's docstring.\n\n"
            "| clock | bare fwd + bwd | clean features per step | update (eager, as crafted) | "
            "update fused (torch.compile) | fused == eager | traffic floor | ceiling |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
