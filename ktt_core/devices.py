"""Device choice, precision, threads and reproducibility."""
from __future__ import annotations

import json
import logging
import random

import numpy as np
import torch

from ktt_core.contract import full_precision_requested
from ktt_core.cpu import (  # available_cpus is re-exported: devices.available_cpus()
    BF16_ENV,
    available_cpus,  # noqa: F401
    bf16_override,
    cpu_has_native_bf16,
    native_bf16_feature,
)
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


#: Device types on which bf16 failed at run time in this process (see :func:`retry_in_fp32`);
#: ``precision: auto`` runs them in fp32 from then on.
_BF16_FAILED: set[str] = set()


def use_bf16(device: torch.device, precision: str) -> bool:
    """Whether forward passes run under bf16 autocast.

    ``auto`` means bf16 on CUDA GPUs that support it and on CPUs with native bf16
    (:func:`ktt_core.cpu.cpu_has_native_bf16`: AVX512-BF16 or AMX), fp32 elsewhere (other
    CPUs, where bf16 is emulated and slower than fp32; MPS); ``fp32`` never; ``bf16`` always.
    Never inside :func:`ktt_core.contract.full_precision` (an export's parity check).
    """
    if full_precision_requested():
        return False
    if precision == "bf16":
        return True
    if precision != "auto" or device.type in _BF16_FAILED:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def describe_precision(device: torch.device, precision: str) -> str:
    """The precision a run uses and why, for the training header and benchmarks:
    ``"bf16 (CPU has AVX512-BF16)"``, ``"fp32 (no native bf16 on this CPU)"``, ..."""
    used = "bf16" if use_bf16(device, precision) else "fp32"
    if precision != "auto":
        slow = device.type == "cpu" and used == "bf16" and native_bf16_feature() is None
        return f"{used} (precision: {precision}" + ("; no native bf16 on this CPU, so slower than fp32)" if slow else ")")
    if device.type in _BF16_FAILED:
        return f"{used} (bf16 failed on this {device.type} at run time)"
    if device.type == "cuda":
        return f"{used} ({'this GPU supports bf16' if used == 'bf16' else 'this GPU has no bf16'})"
    if device.type != "cpu":
        return f"{used} (auto uses bf16 on CUDA and on CPUs with native bf16 only)"
    if bf16_override() is not None:
        return f"{used} ({BF16_ENV}={int(used == 'bf16')})"
    feature = native_bf16_feature()
    return f"{used} (CPU has {feature})" if feature else f"{used} (no native bf16 on this CPU)"


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for forward passes (a no-op in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device, precision))


def retry_in_fp32(device: torch.device, precision: str, step, *args):
    """``step(*args)``; when ``precision: auto`` chose bf16 and an operation refuses bfloat16
    (an op a plugin's head uses that has no bf16 kernel on this device), bf16 is turned off
    for this device type for the rest of the process, a warning says so, and ``step`` runs
    again in fp32. ``step`` must be safe to repeat (a forward pass, or forward and backward
    after ``zero_grad``). An explicit ``precision: bf16`` fails as asked.
    """
    try:
        return step(*args)
    except RuntimeError as exc:
        if precision != "auto" or not use_bf16(device, precision) or "BFloat16" not in str(exc):
            raise
        _BF16_FAILED.add(device.type)
        first = str(exc).strip().splitlines()[0][:200]
        logging.getLogger("ktt").warning("bf16 failed on %s (%s); continuing in fp32 (set precision=fp32 "
                                         "to skip bf16 from the start)", device.type, first)
        return step(*args)


_interop_threads_set = False


def use_threads(threads: int) -> None:
    """Run torch's CPU work on ``threads`` threads (``--threads``).

    ``torch.set_num_threads`` may be called at any time. The inter-op pool (work torch runs
    side by side, rare in KTT) is sized once only, the first time, and only if no parallel work
    started yet: torch refuses a second call, so a later one (tests, several commands in one
    process) leaves it as it is.
    """
    global _interop_threads_set
    torch.set_num_threads(threads)
    if not _interop_threads_set:
        _interop_threads_set = True
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass
