"""Where a stage's model runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from threadpoolctl import threadpool_limits

if TYPE_CHECKING:
    import torch


def pick_device(requested: str | None, cpu_threads: int) -> torch.device:
    """The requested device, else CUDA when present, else the CPU with `cpu_threads` torch and BLAS threads.

    On the CPU, intra-op threads cost more than they save on inputs this small; the stages
    scale with processes instead. numpy's BLAS (OpenBLAS: librosa's mel filterbank, the
    clustering's matrix products) is held to the same count: its idle threads spin, and with
    two of them the fast embed stage spent 1.4-1.8 s of CPU where one thread spends 0.8 s.
    """
    import torch  # here, so that the cluster worker, which has no model, can limit its threads without torch

    device = torch.device(requested) if requested else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads)
        limit_blas_threads(cpu_threads)
    return device


def limit_blas_threads(threads: int = 1) -> None:
    """numpy's BLAS threads for the whole process (a stage worker without a model calls it too)."""
    threadpool_limits(threads, user_api="blas")
