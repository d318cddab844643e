"""Service settings, read from the environment (``ktt serve`` sets them for its child).

BentoML imports a service module in every worker process, so settings travel as
environment variables rather than arguments.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ktt_core.environment import check_url
from ktt_core.errors import KttError


def env_int(name: str, default: int, low: int = 1) -> int:
    """An integer setting from the environment; KttError names the variable when it is bad."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise KttError(f"environment variable {name}={raw!r}: expected an integer") from None
    if value < low:
        raise KttError(f"environment variable {name}={value}: must be at least {low}")
    return value


def _model_tag(model_name: str) -> str:
    """KTT_BENTO_MODEL, for the model named by KTT_MODEL (a plugin module may define several)."""
    if os.environ.get("KTT_MODEL", model_name) == model_name and os.environ.get("KTT_BENTO_MODEL"):
        return os.environ["KTT_BENTO_MODEL"]
    return f"ktt-{model_name}:latest"


LAYOUTS = ("single", "split")  # see ktt_core.serving.service
DEFAULT_MAX_REQUEST_BYTES = 10 * 2**20  # a request of 256 texts of 10,000 characters fits
MONITOR_MAX_REQUEST_BYTES = 64 * 2**20  # /ingest takes up to 10,000 rows of features


def max_request_bytes(default: int = DEFAULT_MAX_REQUEST_BYTES) -> int:
    """The request body cap of a service (KTT_MAX_REQUEST_BYTES), enforced by :mod:`ktt_core.serving.guard`."""
    return env_int("KTT_MAX_REQUEST_BYTES", default)


@dataclass(frozen=True)
class ServiceSettings:
    model_tag: str          # BentoML model store tag (KTT_BENTO_MODEL)
    runtime: str            # torch | onnx (KTT_RUNTIME)
    layout: str             # single | split: model in the HTTP process or behind a runner (KTT_SERVICE_LAYOUT)
    workers: int            # processes serving, each with its own model copy (single) or API (split) (KTT_WORKERS)
    max_batch_size: int     # adaptive batching: texts per model call (KTT_MAX_BATCH_SIZE)
    max_latency_ms: int     # adaptive batching: longest wait for a batch (KTT_MAX_LATENCY_MS)
    max_texts: int          # texts per request (KTT_MAX_TEXTS)
    max_text_chars: int     # characters per text (KTT_MAX_TEXT_CHARS)
    max_top_k: int          # largest top_k a request may ask for (KTT_MAX_TOP_K)
    decoding: str           # consistent | per-level (KTT_DECODING)
    threshold: float | None  # non-leaf predictions (KTT_THRESHOLD)
    monitor_url: str        # drift monitor base URL, "" for none (KTT_MONITOR_URL)
    monitor_queue: int      # rows waiting for the monitor before new ones are dropped (KTT_MONITOR_QUEUE)
    torch_threads: int      # the runner's torch threads, 0 = cpu.default_threads() (KTT_TORCH_THREADS)
    max_request_bytes: int  # request body cap, 413 above it (KTT_MAX_REQUEST_BYTES)
    access_log: bool        # a log line per request (KTT_ACCESS_LOG=1); off: it cost a fifth of the throughput

    @classmethod
    def from_env(cls, model_name: str = "") -> "ServiceSettings":
        runtime = os.environ.get("KTT_RUNTIME", "torch")
        decoding = os.environ.get("KTT_DECODING", "consistent")
        layout = os.environ.get("KTT_SERVICE_LAYOUT", "single")
        if layout not in LAYOUTS:
            raise KttError(f"KTT_SERVICE_LAYOUT={layout!r}: expected single or split")
        if runtime not in ("torch", "onnx"):
            raise KttError(f"KTT_RUNTIME={runtime!r}: expected torch or onnx")
        if decoding not in ("consistent", "per-level"):
            raise KttError(f"KTT_DECODING={decoding!r}: expected consistent or per-level")
        threshold = os.environ.get("KTT_THRESHOLD", "")
        return cls(
            model_tag=_model_tag(model_name),
            runtime=runtime,
            layout=layout,
            workers=env_int("KTT_WORKERS", 1),
            max_batch_size=env_int("KTT_MAX_BATCH_SIZE", 64),
            max_latency_ms=env_int("KTT_MAX_LATENCY_MS", 2000),
            max_texts=env_int("KTT_MAX_TEXTS", 256),
            max_text_chars=env_int("KTT_MAX_TEXT_CHARS", 10_000),
            max_top_k=env_int("KTT_MAX_TOP_K", 10),
            decoding=decoding,
            threshold=float(threshold) if threshold else None,
            monitor_url=check_url(os.environ.get("KTT_MONITOR_URL", ""), "KTT_MONITOR_URL").rstrip("/"),
            monitor_queue=env_int("KTT_MONITOR_QUEUE", 2000),
            torch_threads=env_int("KTT_TORCH_THREADS", 0, low=0),
            max_request_bytes=max_request_bytes(),
            access_log=os.environ.get("KTT_ACCESS_LOG", "0").strip().lower() in ("1", "true", "yes"),
        )
