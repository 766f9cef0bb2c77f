"""Shared pieces of the crafting benchmarks: the machine header, the default surrogate, interleaved timing.

Imported by the ``bench_*.py`` scripts next to it (run them from the repository root).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
# ``wall``: wall time, torch's default threads; ``cpu1``: the process's CPU time on one torch thread (the work,
# nearly independent of other jobs' load).
CLOCKS = {"wall": time.perf_counter, "cpu1": time.process_time}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(title: str) -> str:
    """Markdown title plus the machine, the load when it ran, versions and the exact command."""
    cpu = cpu_name()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"# {title}\n\n"
            f"- machine: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; GPU: {device}\n"
            f"- load average (1/5/15 min) at the end: {load} (other jobs share this machine)\n"
            f"- torch {torch.__version__}, python {platform.python_version()}\n"
            f"- command: `python {' '.join(sys.argv)}`\n")


def compose_run(overrides: list[str] = ()):
    """The composed ``run`` config (as ``python run.py`` would build it), outside a Hydra job."""
    from hydra import compose, initialize_config_dir

    from opom.resolvers import register

    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("run", overrides=[*overrides, "paths.output_dir=/tmp/opom-bench"])


def default_world(overrides: list[str] = ()):
    """(cfg, protection set, trained surrogate) of the default synthetic world (cached after the first run)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from opom.models.zoo import build_face_model
    from opom.pipeline import surrogate_specs

    cfg = compose_run(overrides)
    dataset = instantiate(cfg.dataset)
    protection = dataset.protection_set()
    (spec, *_) = surrogate_specs(cfg).values()  # the first surrogate (the default names one)
    surrogate = build_face_model(spec, dataset, OmegaConf.to_container(cfg.fr_train, resolve=True),
                                 cfg.paths.cache_dir)
    return cfg, protection, surrogate


def subset(protection, identities: int):
    """The first ``identities`` people of a protection set (repeated if it has fewer)."""
    from opom.data.protection import ProtectionSet

    idx = torch.arange(identities) % protection.num_identities
    names = [f"{protection.names[int(i)]}#{k}" for k, i in enumerate(idx)]
    return ProtectionSet(names, protection.mask_images[idx].contiguous(), protection.test_images[idx].contiguous(),
                         protection.distractors)


class EpochTimer(L.Callback):
    """Time of the training epoch (wall time, or ``clock``): every step, with data loading and logging."""

    seconds = float("nan")

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = self.clock()

    def on_train_epoch_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = self.clock() - self._start


def pipeline_log_every() -> int:
    """``trainer.log_every_n_steps`` of ``conf/run.yaml``: how often the pipeline logs the crafting loss."""
    from omegaconf import OmegaConf

    return int(OmegaConf.load(ROOT / "conf" / "run.yaml").trainer.log_every_n_steps)


def craft_seconds(surrogate, method, attack, protection, identities_per_batch: int, log_dir: Path | None = None,
                  clock: Callable[[], float] = time.perf_counter, instrument: Callable | None = None,
                  accelerator: str = "cpu", callbacks: list[L.Callback] = ()):
    """Run the crafting exactly as the pipeline does (one Trainer.fit, logging on the pipeline's logging steps)
    and return the epoch's time (``clock``: wall time by default) and the masks. ``instrument(module)`` is called
    on the crafter before the fit (e.g. to time its parts); ``callbacks`` join the fit (e.g. to time reference
    passes between its steps)."""
    from lightning.pytorch.loggers import CSVLogger

    from opom.data.protection import ProtectionDataModule
    from opom.module import MaskCrafter

    module = MaskCrafter(surrogate, method, attack, protection.num_identities, protection.image_size)
    if instrument is not None:
        instrument(module)
    timer = EpochTimer(clock)
    logger = CSVLogger(str(log_dir)) if log_dir else False
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[timer, *callbacks], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=pipeline_log_every(), accelerator=accelerator, devices=1)
    iterations = attack.iterations if method.crafts else 1
    trainer.fit(module, datamodule=ProtectionDataModule(protection, identities_per_batch, iterations))
    return timer.seconds, module.masks.detach().clone()


def parse_modes(ap: argparse.ArgumentParser, text: str) -> list[str]:
    """The comma-separated clocks of ``--modes`` (keys of :data:`CLOCKS`); an unknown one is a usage error."""
    modes = [m for m in text.split(",") if m]
    unknown = set(modes) - set(CLOCKS)
    if unknown:
        ap.error(f"unknown --modes {sorted(unknown)}; choose from {sorted(CLOCKS)}")
    return modes


@contextlib.contextmanager
def clock_of(mode: str):
    """The clock of ``mode`` (:data:`CLOCKS`); for ``cpu1`` torch runs on one thread until the block ends."""
    threads = torch.get_num_threads()
    if mode == "cpu1":
        torch.set_num_threads(1)
    try:
        yield CLOCKS[mode]
    finally:
        torch.set_num_threads(threads)


def interleaved(*measures: Callable[[], float], rounds: int,
                before_round: Callable[[], None] | None = None) -> list[tuple]:
    """``rounds`` tuples of the measures' results, the order rotating every round, so that load from other
    jobs hits every measure alike. ``before_round`` (untimed) runs at the start of every round."""
    results = []
    k = len(measures)
    for r in range(rounds):
        if before_round is not None:
            before_round()
        out = [0.0] * k
        for j in range(k):
            i = (r + j) % k
            out[i] = measures[i]()
        results.append(tuple(out))
    return results


def median(xs) -> float:
    return float(statistics.median(xs))


def quiet() -> None:
    """Silence Lightning's per-fit chatter."""
    import warnings

    from opom.logs import quiet_lightning

    quiet_lightning()
    warnings.filterwarnings("ignore", message=".*configure_optimizers.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
