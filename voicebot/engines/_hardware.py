"""What the machine offers: physical cores, CUDA, native bf16."""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = [
    "SIMD_FLAGS",
    "cpu_flags",
    "cpu_has_bf16",
    "cpu_info",
    "cpu_model",
    "cuda_available",
    "parse_cpuinfo",
    "physical_cores",
]

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


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """The first CPU's model name and all its flags, from the text of /proc/cpuinfo."""
    model = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags


@functools.cache
def _this_cpu() -> tuple[str, frozenset[str]]:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return "", frozenset()


def cpu_model() -> str:
    """This machine's CPU model name (empty where /proc/cpuinfo cannot be read)."""
    return _this_cpu()[0]


def cpu_flags() -> frozenset[str]:
    """Every flag of this machine's CPU (empty where /proc/cpuinfo cannot be read)."""
    return _this_cpu()[1]


def cpu_info() -> dict[str, object]:
    """The CPU's model name and which of :data:`SIMD_FLAGS` it has (from /proc/cpuinfo)."""
    return {"model": cpu_model(), "flags": [f for f in SIMD_FLAGS if f in cpu_flags()]}


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 beats fp32.

    False when ``ATEN_CPU_CAPABILITY`` holds PyTorch to AVX2 or less (the benchmark's plain-CPU
    pass), since PyTorch then runs no bf16 kernels.
    """
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in {"default", "avx2"}:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@functools.cache
def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False
