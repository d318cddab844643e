"""Drift monitoring of served models: live predictions against the run's reference set.

- :mod:`ktt_core.monitoring.drift`: :class:`~ktt_core.monitoring.drift.DriftDetector`, a sliding
  window of live rows and its drift (Evidently 0.7);
- :mod:`ktt_core.monitoring.service`: the ``KttMonitor`` BentoML service (``POST /ingest``,
  ``/drift``, ``/report``; Prometheus gauges on ``/metrics``);
- :mod:`ktt_core.monitoring.client`: :class:`~ktt_core.monitoring.client.MonitorClient`, the
  inference service's non-blocking sender;
- :mod:`ktt_core.monitoring.launch`: ``ktt monitor`` and :func:`~ktt_core.monitoring.launch.start_monitor`.

See docs/monitoring.md.
"""
