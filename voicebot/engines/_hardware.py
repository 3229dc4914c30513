"""What the machine offers: physical cores, CUDA, native bf16."""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["cpu_has_bf16", "cuda_available", "physical_cores"]


@functools.cache
def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
    except ImportError:  # psutil comes with accelerate, but is not essential
        physical = allowed
    return max(1, min(physical or 1, allowed or 1))


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 beats fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool({"avx512_bf16", "amx_bf16"} & flags)
    return False


@functools.cache
def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False
