"""What the machine offers: physical cores, CUDA, native bf16."""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["SIMD_FLAGS", "cpu_has_bf16", "cpu_info", "cuda_available", "physical_cores"]

SIMD_FLAGS = (
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
"""The instruction-set flags that decide which kernels the engines run."""


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
def cpu_info() -> dict[str, object]:
    """The CPU's model name and which of :data:`SIMD_FLAGS` it has (from /proc/cpuinfo)."""
    model = ""
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    return {"model": model, "flags": [f for f in SIMD_FLAGS if f in flags]}


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 beats fp32.

    False when ``ATEN_CPU_CAPABILITY`` holds PyTorch to AVX2 or less (the benchmark's plain-CPU
    pass), since PyTorch then runs no bf16 kernels.
    """
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in {"default", "avx2"}:
        return False
    flags = cpu_info()["flags"]
    assert isinstance(flags, list)
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


@functools.cache
def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False
