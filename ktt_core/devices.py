"""Device choice and reproducibility."""
from __future__ import annotations

import random

import numpy as np
import torch

from ktt_core.errors import KttError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an unavailable device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KttError(f"--device {name!r}: not a device name (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KttError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise KttError(f"--device {name}: MPS is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_bf16(device: torch.device, precision: str) -> bool:
    """``auto`` means bf16 on CUDA GPUs that support it, fp32 elsewhere (CPU bf16 is opt-in)."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for forward passes (a no-op in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device, precision))
