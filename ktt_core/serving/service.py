"""The machinery of every model's BentoML service; a plugin's ``bentoml/service.py`` names it.

The HTTP face is the same in both layouts: ``POST /predict`` with ``{"text": ...}`` or
``{"texts": [...]}`` and optional ``top_k``; the request is validated (4xx with a clear
message), predictions per class and latency are counted for Prometheus (``/metrics``, next
to BentoML's own). ``/readyz`` and ``/livez`` are BentoML's; ``/readyz`` answers 503 until the
model is loaded, and 503 with the reason when it failed to load.
:mod:`ktt_core.serving.guard` stands in front of it (body cap, 415). Each prediction also
goes to the drift monitor, without waiting for it (:class:`ktt_core.monitoring.client.MonitorClient`).

Where the model runs is the layout (``KTT_SERVICE_LAYOUT``, ``ktt serve --layout``):

- ``single`` (default): one process holds the model and answers HTTP; the texts of
  concurrent requests share model calls through :class:`ktt_core.serving.batching.MicroBatcher`.
  No hop between processes, no second copy of each request: the fastest on one machine.
- ``split``: BentoML's two-service pattern. ``<Name>Runner`` holds the model behind one
  batchable method, ``classify(texts)`` (BentoML's adaptive batching); ``<Name>Service``
  validates and calls it over a local HTTP hop. It pays where the HTTP work deserves cores
  of its own: several API workers (``--api-workers``) feeding one model copy on a GPU.

Batches hold at most ``KTT_MAX_BATCH_SIZE`` texts; a request waits at most
``KTT_MAX_LATENCY_MS`` for the model (503 after that). A plugin declares its services in
one line (see :func:`define_service`).
"""
from __future__ import annotations

import os
import time
from typing import Any

import bentoml
from bentoml import IODescriptor
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from pydantic import ConfigDict

from ktt_core.errors import KttError
from ktt_core.serving.guard import NOT_READY, guard
from ktt_core.serving.settings import ServiceSettings

_METRICS: dict[str, Any] = {}


def _metric(kind: str, name: str, documentation: str, **kwargs):
    """A Prometheus metric created on first use, inside the worker process.

    BentoML sets up Prometheus' multiprocess directory when a worker starts, after the
    service module is imported; metrics created earlier would never reach ``/metrics``.
    """
    if name not in _METRICS:
        import prometheus_client

        _METRICS[name] = getattr(prometheus_client, kind)(name, documentation, **kwargs)
    return _METRICS[name]


def validate_request(text: Any, texts: Any, top_k: Any, settings: ServiceSettings) -> list[str]:
    """The texts of a request, or :class:`InvalidArgument` (HTTP 400) saying what is wrong."""
    if (text is None) == (texts is None):
        raise InvalidArgument('send either "text": "..." or "texts": ["...", ...]')
    if text is not None:
        texts, where = [text], "text"
    else:
        where = "texts"
        if not isinstance(texts, list):
            raise InvalidArgument('"texts" must be a list of strings')
        if not texts:
            raise InvalidArgument('"texts" is empty')
        if len(texts) > settings.max_texts:
            raise InvalidArgument(f'"texts" has {len(texts)} items; at most {settings.max_texts} per request')
    for i, item in enumerate(texts):
        name = where if where == "text" else f"texts[{i}]"
        if not isinstance(item, str):
            raise InvalidArgument(f'"{name}" must be a string, got {type(item).__name__}')
        if not item.strip():
            raise InvalidArgument(f'"{name}" is empty')
        if len(item) > settings.max_text_chars:
            raise InvalidArgument(f'"{name}" has {len(item)} characters; at most {settings.max_text_chars}')
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= settings.max_top_k:
        raise InvalidArgument(f'"top_k" must be an integer from 1 to {settings.max_top_k}')
    return texts


class PredictRequest(IODescriptor):
    """The body of ``POST /predict``. Types are checked by :func:`validate_request`, whose
    messages name the field; an unknown field (a typo) is refused rather than ignored."""

    model_config = ConfigDict(extra="forbid")
    text: Any = None
    texts: Any = None
    top_k: Any = 1


class ModelHost:
    """Loads the stored model and classifies batches of texts: the runner of the split
    layout, the whole service of the single one."""

    model_name: str = ""
    settings: ServiceSettings

    def __init__(self) -> None:
        import logging

        self.load_error = None
        self.monitor = None
        try:
            self._load()
        except Exception as e:  # noqa: BLE001 - any load failure: stay up, not ready, say why
            # Raising here would make BentoML restart the worker forever while /readyz
            # said nothing useful; instead the process lives on, not ready, and /readyz
            # (through the runner's /status in the split layout) tells ``ktt serve`` why.
            from ktt_core.secrets import mask_secrets

            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.load_error = mask_secrets(first if isinstance(e, KttError) else f"{type(e).__name__}: {first}")
            logging.getLogger("ktt").error("service of %s: the model failed to load: %s",
                                           self.model_name, self.load_error)

    def _load(self) -> None:
        import logging

        from ktt_core.cpu import default_threads
        from ktt_core.export.bento import load_predictor

        # Not torch's default of one thread per CPU of the machine: a container limited to a
        # few of them would overcommit them. ktt serve --threads N sets KTT_TORCH_THREADS and
        # OMP_NUM_THREADS; onnxruntime reads the latter (ktt_core.onnx_runtime's default).
        threads = self.settings.torch_threads or default_threads()
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # onnxruntime's count (--runtime onnx)
        if self.settings.runtime == "torch":
            import torch

            torch.set_num_threads(threads)
        self.predictor = load_predictor(self.stored_model.path, self.settings.runtime)
        logging.getLogger("ktt").warning("model %s: runtime %s, layout %s, batches of up to %d, %d threads",
                                         self.model_name, self.settings.runtime, self.settings.layout,
                                         self.settings.max_batch_size, threads)
        if self.settings.monitor_url:
            from ktt_core.monitoring.client import MonitorClient

            sent = _metric("Counter", "ktt_monitor_rows_sent", "Rows delivered to the drift monitor",
                           labelnames=["model"]).labels(model=self.model_name)
            dropped = _metric("Counter", "ktt_monitor_rows_dropped",
                              "Rows not delivered to the drift monitor (queue full or monitor down)",
                              labelnames=["model"]).labels(model=self.model_name)
            self.monitor = MonitorClient(self.settings.monitor_url, queue_size=self.settings.monitor_queue,
                                         on_sent=sent.inc, on_dropped=dropped.inc)

    def _classify(self, texts: list[str]) -> list[dict]:
        from ktt_core.decoding import describe_all
        from ktt_core.hierarchy import format_path

        if self.load_error is not None:
            raise ServiceUnavailable(f"the model failed to load: {self.load_error}")

        _metric("Histogram", "ktt_batch_size", "Texts per model call (adaptive batching)", labelnames=["model"],
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)).labels(model=self.model_name).observe(len(texts))
        predictions, features = self.predictor.run(texts)
        s = self.settings
        results = describe_all(self.predictor.hierarchy, predictions, s.max_top_k, s.decoding, s.threshold)
        if self.monitor is not None:
            self.monitor.send([{"features": f.tolist(), "prediction": format_path(r["path"]), "score": r["score"]}
                               for f, r in zip(features, results)])
        return results


class KttApi:
    """``POST /predict``: validation, the model call (:meth:`classify`), KTT's Prometheus metrics."""

    model_name: str = ""
    settings: ServiceSettings

    def _init_metrics(self) -> None:
        self.predicted = _metric("Counter", "ktt_predictions", "Predictions served, per predicted class",
                                 labelnames=["model", "label"])
        self.latency = _metric("Histogram", "ktt_request_latency_seconds", "Time to answer POST /predict",
                               labelnames=["model"],
                               buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))

    async def classify(self, texts: list[str]) -> list[dict]:
        """The model's results for ``texts``, batched with other requests' (by the layout)."""
        raise NotImplementedError

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    async def predict(self, text: Any = None, texts: Any = None, top_k: Any = 1) -> dict:
        """Predict the label path of ``text`` or of each of ``texts``."""
        started = time.perf_counter()
        batch = validate_request(text, texts, top_k, self.settings)
        results = await self.classify(batch)
        out = []
        for item, result in zip(batch, results):
            label = " > ".join(result["path"])
            self.predicted.labels(model=self.model_name, label=label).inc()
            out.append({"text": item, "path": result["path"], "label": label, "score": result["score"],
                        "levels": result["levels"],
                        **({"top_k": result["top_k"][:top_k]} if top_k > 1 else {})})
        self.latency.labels(model=self.model_name).observe(time.perf_counter() - started)
        return {"model": self.model_name, "predictions": out}


def not_ready(error: str | None) -> bool:
    """True, or the 503 that /readyz answers when the model failed to load (``error``)."""
    if error:
        from starlette.exceptions import HTTPException

        raise HTTPException(status_code=503, detail=NOT_READY + error)
    return True


class KttSingleService(ModelHost, KttApi):
    """Layout ``single``: the model and the HTTP face in one process (see the module docstring)."""

    def __init__(self) -> None:
        from ktt_core.serving.batching import MicroBatcher

        ModelHost.__init__(self)
        self._init_metrics()
        self.batcher = MicroBatcher(self._classify, self.settings.max_batch_size, self.settings.max_latency_ms)

    async def __is_ready__(self) -> bool:
        """BentoML's /readyz: the model is loaded in ``__init__``; 503 with the reason if it failed."""
        return not_ready(self.load_error)

    async def classify(self, texts: list[str]) -> list[dict]:
        from ktt_core.serving.batching import Overloaded

        if self.load_error is not None:
            raise ServiceUnavailable(f"the model failed to load: {self.load_error}")
        try:
            return await self.batcher.submit(texts)
        except Overloaded as e:
            raise ServiceUnavailable(str(e)) from None


class KttRunner(ModelHost):
    """Layout ``split``: the model behind a batchable ``classify`` (added by :func:`define_service`)."""

    @bentoml.api(route="/status")
    def status(self) -> dict:
        """``{"error": null}`` when the model is loaded, else the reason it is not."""
        return {"error": self.load_error}


class KttSplitService(KttApi):
    """Layout ``split``: the HTTP face, calling the runner service over BentoML's local hop."""

    runner: Any

    def __init__(self) -> None:
        self._init_metrics()

    async def __is_ready__(self) -> bool:
        """BentoML's /readyz: ready when the runner has loaded the model; 503 with the reason
        when it failed to; not ready (503) while the runner does not answer yet."""
        try:
            status = await self.runner.to_async.status()
        except Exception:  # noqa: BLE001 - the runner is still starting (or gone): not ready
            return False
        return not_ready(status.get("error"))

    async def classify(self, texts: list[str]) -> list[dict]:
        return await self.runner.to_async.classify(texts)


# BentoML 1.4 renews the API -> runner HTTP session every 100 requests and closes the old one
# while concurrent requests still use it ("Connector is closed", HTTP 500 under load).
NO_SESSION_REFRESH = {"max_requests": 2**31 - 1, "max_age": 10.0 ** 9}


def define_service(model_name: str, module: str, prefix: str):
    """The runner and the HTTP service classes of ``model_name``, to assign in the plugin's module:

    ``DbLinearRunner, DbLinearService = define_service("db_linear", __name__, "DbLinear")``

    ``<Prefix>Service`` is what ``bentoml serve`` runs. In the ``single`` layout it holds the
    model itself and ``<Prefix>Runner`` is None; in the ``split`` layout it depends on the runner.
    """
    settings = ServiceSettings.from_env(model_name)
    stored_model = bentoml.models.BentoModel(settings.model_tag)
    names = {"__module__": module, "model_name": model_name, "settings": settings}
    if settings.layout == "single":
        api_cls = type(f"{prefix}Service", (KttSingleService,), {
            **names, "__qualname__": f"{prefix}Service", "stored_model": stored_model})
        runner = None
    else:
        def classify(self, texts: list[str]) -> list[dict]:
            return self._classify(texts)

        classify.__doc__ = "Classify a batch of texts (BentoML batches concurrent requests)."
        runner_cls = type(f"{prefix}Runner", (KttRunner,), {
            **names, "__qualname__": f"{prefix}Runner", "stored_model": stored_model,
            "classify": bentoml.api(batchable=True, max_batch_size=settings.max_batch_size,
                                    max_latency_ms=settings.max_latency_ms)(classify),
        })
        runner = bentoml.service(name=f"{prefix.lower()}-runner", workers=1,
                                 runner_connection=NO_SESSION_REFRESH)(runner_cls)
        api_cls = type(f"{prefix}Service", (KttSplitService,), {
            **names, "__qualname__": f"{prefix}Service", "runner": bentoml.depends(runner)})
    api = bentoml.service(name=f"{prefix.lower()}", workers=settings.workers, traffic={"timeout": 60},
                          runner_connection=NO_SESSION_REFRESH,
                          logging={"access": {"enabled": settings.access_log}})(api_cls)
    # The public face sheds oversized, non-JSON and abandoned requests. The runner is reached
    # only by this API, with bodies it has already capped (and in BentoML's own encoding).
    guard(api, settings.max_request_bytes)
    return runner, api
