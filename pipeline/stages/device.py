"""Where a stage's model runs."""

from __future__ import annotations

import torch


def pick_device(requested: str | None, cpu_threads: int) -> torch.device:
    """The requested device, else CUDA when present, else the CPU with `cpu_threads` torch threads.

    On the CPU, torch's intra-op threads cost more than they save on inputs this small;
    the stages scale with processes instead.
    """
    device = torch.device(requested) if requested else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads)
    return device
