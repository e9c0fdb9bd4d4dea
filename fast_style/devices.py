"""Where and in which number format to compute: the device (CUDA, Apple MPS or the CPU) and the precision that is
fast and safe on it, from what this machine has."""

from __future__ import annotations

from pathlib import Path

import torch

from fast_style.errors import UserError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_info() -> str:
    """The text of /proc/cpuinfo, or "" where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX). Elsewhere PyTorch emulates bf16
    and a training step gets tens of times slower than fp32 (measured on an AVX2-only AMD EPYC)."""
    flags = cpu_info().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple's MPS, then the CPU."""
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device={device} but no CUDA GPU is visible; use device=auto or device=cpu")
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_precision(device: torch.device, precision: str = "auto") -> torch.dtype:
    """``auto``: the fastest precision that is safe on the device (bf16 only where it is native)."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise UserError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
        return PRECISIONS[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
