"""The BentoML services of DB-BHCN and DB-BHCN+AWX: `ktt serve MODEL DATASET` runs them.

Everything but the names comes from :mod:`ktt_core.serving.service`: a runner service that
batches texts through the model, and the HTTP service in front (``POST /predict``).
"""
from ktt_core.serving.service import define_service

DbBhcnRunner, DbBhcnService = define_service("db_bhcn", __name__, "DbBhcn")
DbBhcnAwxRunner, DbBhcnAwxService = define_service("db_bhcn_awx", __name__, "DbBhcnAwx")
