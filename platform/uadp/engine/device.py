"""Device and numeric precision.

``precision: auto`` picks fp16 autocast (with gradient scaling) on CUDA and plain fp32 on a CPU.
bf16 autocast on a CPU is a choice to make per model, so it is never automatic: on a CPU with
native bf16 (AVX512-BF16 / AMX) it halved the paper-size UniAD's training step at the same
accuracy, but left the 128-wide CPU preset's step as it was and cost it pixel AP (README,
"Hardware"). Without native bf16 it is emulated and
several times slower than fp32 (a 256-wide matmul: 10×), so asking for it there warns.
"""

from __future__ import annotations

import contextlib
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} requested but no CUDA GPU is available")
    return device


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(
        word for line in text.splitlines() if line.startswith("flags") for word in line.split(":", 1)[1].split()
    )


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), for benchmark output."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    return next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "unknown CPU"
    )


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 arithmetic (AVX512-BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision: fp16 needs a CUDA device; on a CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "train.precision bf16: this CPU has no native bf16 (AVX512-BF16/AMX); "
            "emulated bf16 is several times slower than fp32",
            stacklevel=2,
        )
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for the forward pass (a no-op in fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
