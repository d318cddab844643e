"""The BentoML services of the TF-IDF models: `ktt serve tfidf_lsgd DATASET` runs them.

Everything but the names comes from :mod:`ktt_core.serving.service`, as for every model.
"""
from ktt_core.serving.service import define_service

TfidfLsgdRunner, TfidfLsgdService = define_service("tfidf_lsgd", __name__, "TfidfLsgd")
TfidfHsgdRunner, TfidfHsgdService = define_service("tfidf_hsgd", __name__, "TfidfHsgd")
