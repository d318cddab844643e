"""Device choice and reproducibility."""
from __future__ import annotations

import json
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


def rng_state() -> dict:
    """Every random generator training draws from, as checkpointable values (plain-tensor
    and JSON, so a checkpoint stays loadable with ``weights_only``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"python_json": json.dumps([version, list(internal), gauss]),
             "numpy_json": json.dumps([kind, keys.tolist(), pos, has_gauss, cached]),
             "torch": torch.get_rng_state()}
    # Only when CUDA is in use: querying it would otherwise start a CUDA context.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states for the devices present)."""
    version, internal, gauss = json.loads(state["python_json"])
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = json.loads(state["numpy_json"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for index, value in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(value, index)


def use_bf16(device: torch.device, precision: str) -> bool:
    """``auto`` means bf16 on CUDA GPUs that support it, fp32 elsewhere (CPU bf16 is opt-in)."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for forward passes (a no-op in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device, precision))
