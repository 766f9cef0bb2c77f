"""Run small CPU work on one intra-op thread.

Many small tensor operations (batched N x N solves, per-identity mask updates that fit in the CPU cache)
gain nothing from threads, and every threaded kernel pays a synchronisation; on a machine shared with
other processes that cost grows to milliseconds per operation. Results never depend on the thread count.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_cpu_thread(device: torch.device | str = "cpu"):
    """Within the block, torch uses one intra-op thread if ``device`` is the CPU (restored afterwards)."""
    threads = torch.get_num_threads()
    if threads == 1 or torch.device(device).type != "cpu":
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
