"""``ktt export --bento --monitoring``: a docker-compose stack to run a model in production.

Four services: the model's Bento (``bentoml containerize`` makes its image), the drift
monitor (same image, another entry point), Prometheus scraping both, and Grafana with a
provisioned Prometheus datasource and one dashboard for the model. Every query on the
dashboard names a metric that the KTT services expose (the tests check it against live
``/metrics`` output).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

SERVICE_PORT = 3000
MONITOR_PORT = 3001

#: Dashboard panels: (title, PromQL expressions, unit). ``$model`` is the model's name.
PANELS = [
    ("Requests per second", ['sum(rate(ktt_request_latency_seconds_count{model="$model"}[1m]))'], "reqps"),
    ("Latency p50 / p99", [
        'histogram_quantile(0.5, sum by (le) (rate(ktt_request_latency_seconds_bucket{model="$model"}[5m])))',
        'histogram_quantile(0.99, sum by (le) (rate(ktt_request_latency_seconds_bucket{model="$model"}[5m])))'],
     "s"),
    ("Predictions per class", ['sum by (label) (rate(ktt_predictions_total{model="$model"}[5m]))'], "ops"),
    ("Adaptive batch size (mean)", [
        'sum(rate(ktt_batch_size_sum{model="$model"}[5m])) / sum(rate(ktt_batch_size_count{model="$model"}[5m]))'],
     "short"),
    ("Feature drift: share of drifted features", ['ktt_drift_share{model="$model"}'], "percentunit"),
    ("Dataset drift (1 = drift)", ['ktt_dataset_drift{model="$model"}'], "short"),
    ("Prediction drift: chi-square p-value (low = drift)", ['ktt_prediction_drift_score{model="$model"}'], "short"),
    ("Monitor window rows", ['ktt_monitor_window_rows{model="$model"}'], "short"),
    ("Rows sent to / dropped by the monitor", ['sum(rate(ktt_monitor_rows_sent_total{model="$model"}[5m]))',
                                               'sum(rate(ktt_monitor_rows_dropped_total{model="$model"}[5m]))'],
     "ops"),
]


def dashboard(model_name: str) -> dict:
    """A Grafana dashboard (JSON model) for one KTT model."""
    panels = []
    for i, (title, exprs, unit) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr.replace("$model", model_name),
                         "datasource": {"type": "prometheus", "uid": "prometheus"}}
                        for j, expr in enumerate(exprs)],
        })
    return {"uid": f"ktt-{model_name}".replace("_", "-"), "title": f"KTT {model_name}", "tags": ["ktt"],
            "schemaVersion": 39, "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "panels": panels}


def write_compose(spec, tag: str, output: Path, reference: Path | None = None, force: bool = False) -> Path:
    """Write the stack into ``output`` (replaced whole, atomically, with a manifest; never over
    files KTT did not write); returns the compose file."""
    import yaml

    from ktt_core.manifest import export_directory

    image = f"ktt-{spec.name}".replace("_", "-") + ":latest"
    compose = {
        "name": f"ktt-{spec.name}".replace("_", "-"),
        "services": {
            "ktt": {
                "image": image,
                "environment": {"KTT_MODEL": spec.name, "KTT_BENTO_MODEL": tag,
                                "KTT_MONITOR_URL": f"http://monitor:{MONITOR_PORT}"},
                "ports": [f"{SERVICE_PORT}:{SERVICE_PORT}"],
                "depends_on": ["monitor"],
                "restart": "unless-stopped",
            },
            "monitor": {
                "image": image,
                "entrypoint": ["bentoml", "serve", "ktt_core.monitoring.service:KttMonitor",
                               "--port", str(MONITOR_PORT)],
                "environment": {"KTT_MONITOR_REFERENCE": "/ktt/reference.parquet",
                                "KTT_MONITOR_MODEL": spec.name},
                "volumes": ["./reference.parquet:/ktt/reference.parquet:ro"],
                "ports": [f"{MONITOR_PORT}:{MONITOR_PORT}"],
                "restart": "unless-stopped",
            },
            "prometheus": {
                "image": "prom/prometheus:v3.5.0",
                "volumes": ["./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"],
                "ports": ["9090:9090"],
                "depends_on": ["ktt", "monitor"],
            },
            "grafana": {
                "image": "grafana/grafana:12.1.0",
                "environment": {"GF_AUTH_ANONYMOUS_ENABLED": "true", "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer"},
                "volumes": ["./grafana/provisioning:/etc/grafana/provisioning:ro",
                            "./grafana/dashboards:/var/lib/grafana/dashboards:ro"],
                "ports": ["3100:3000"],
                "depends_on": ["prometheus"],
            },
        },
    }
    prometheus = {
        "global": {"scrape_interval": "15s"},
        "scrape_configs": [
            {"job_name": "ktt", "metrics_path": "/metrics", "static_configs": [{"targets": [f"ktt:{SERVICE_PORT}"]}]},
            {"job_name": "ktt-monitor", "metrics_path": "/metrics",
             "static_configs": [{"targets": [f"monitor:{MONITOR_PORT}"]}]},
        ],
    }
    datasource = {"apiVersion": 1, "datasources": [
        {"name": "Prometheus", "uid": "prometheus", "type": "prometheus", "access": "proxy",
         "url": "http://prometheus:9090", "isDefault": True}]}
    provider = {"apiVersion": 1, "providers": [
        {"name": "ktt", "folder": "KTT", "type": "file", "options": {"path": "/var/lib/grafana/dashboards"}}]}
    with export_directory(output, force) as tmp:
        dump = lambda rel, data: _write(tmp / rel, yaml.safe_dump(data, sort_keys=False))  # noqa: E731
        dump("docker-compose.yaml", compose)
        dump("prometheus/prometheus.yml", prometheus)
        dump("grafana/provisioning/datasources/prometheus.yaml", datasource)
        dump("grafana/provisioning/dashboards/ktt.yaml", provider)
        _write(tmp / "grafana" / "dashboards" / f"{spec.name}.json", json.dumps(dashboard(spec.name), indent=2))
        if reference is not None and reference.is_file():
            shutil.copyfile(reference, tmp / "reference.parquet")
        _write(tmp / "README.md", README.format(model=spec.name, image=image))
    return Path(output) / "docker-compose.yaml"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


README = """# {model}: production stack

    bentoml containerize BENTO_TAG -t {image}   # BENTO_TAG: printed by ktt export --bento --build
    docker compose up -d

- `POST http://localhost:3000/predict` — the model (`{{"text": "..."}}`)
- `http://localhost:3001/metrics` — the drift monitor (fed by the model service)
- `http://localhost:9090` — Prometheus; `http://localhost:3100` — Grafana, dashboard "KTT {model}"

`reference.parquet` is the drift reference set of the exported run (train with `--reference`).
"""
