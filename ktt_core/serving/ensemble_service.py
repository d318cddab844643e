"""The BentoML services of the core's ``ensemble`` model: ``ktt serve ensemble DATASET`` runs them.

Like every model's, they come from :func:`ktt_core.serving.service.define_service`.
"""
from ktt_core.serving.service import define_service

EnsembleRunner, EnsembleService = define_service("ensemble", __name__, "Ensemble")
