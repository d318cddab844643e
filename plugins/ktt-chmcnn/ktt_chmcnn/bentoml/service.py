"""The BentoML services of DB-AC-HMCNN: `ktt serve MODEL DATASET` runs them.

Everything but the names comes from :mod:`ktt_core.serving.service`: a runner service that
batches texts through the model, and the HTTP service in front (``POST /predict``).
"""
from ktt_core.serving.service import define_service

DbAchmcnnRunner, DbAchmcnnService = define_service("db_achmcnn", __name__, "DbAchmcnn")
