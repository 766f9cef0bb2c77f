"""What a result was computed with: the data it used and the machine it ran on (recorded in ``results.json``).

Numbers of the same job agree bit for bit on one machine, but not across CPUs or library versions (floating
point reductions differ; sign steps amplify the differences), so every result names both.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from opom.data.gallery import as_gallery


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str | None = None) -> dict:
    """Library versions and hardware of this process: torch, opom, Python, the CPU (and the GPU when
    ``device`` is one)."""
    from opom import __version__

    device = torch.device(device or "cpu")
    out = {"opom": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "device": device.type}
    if device.type == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def data_used(name: str, protection) -> dict:
    """The photos a job crafted and tested on: people, mask and test photos per person, gallery size, trials."""
    n_id, t = protection.test_images.shape[:2]
    return {"name": name, "identities": n_id, "mask_images": int(protection.mask_images.shape[1]),
            "test_images": t, "distractors": len(as_gallery(protection.distractors)), "trials": n_id * t * (t - 1)}


def describe(env: dict) -> str:
    """One line of an :func:`environment` record, for reports."""
    gpu = f", GPU {env['gpu']}" if env.get("gpu") else ""
    return (f"torch {env.get('torch')}, Python {env.get('python')}, opom {env.get('opom')}; CPU {env.get('cpu')} "
            f"({env.get('cpu_cores')} cores, {env.get('torch_threads')} torch threads){gpu}")
