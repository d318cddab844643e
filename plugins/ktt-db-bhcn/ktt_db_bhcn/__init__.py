"""KTT plugin: DistilBERT+BHCN (DB-BHCN) and DistilBERT+BHCN+AWX (DB-BHCN-AWX)."""
from ktt_core import hookimpl
from ktt_core.registry import ModelSpec

# The core's encoder defaults (learning rates and schedule for the packaged MiniLM) with
# lighter dropout; the original KTT's values (encoder 3e-5, head 5e-4, dropout 0.3 for
# BHCN; 5.2e-5, 3.7e-4, 0.47 for BHCN-AWX) left the head undertrained in 3 epochs
# (Walmart sample: 0.468 against 0.618, docs/quality.md). They are in
# examples/original-db-bhcn.yaml and examples/original-db-bhcn-awx.yaml.
BHCN_DEFAULTS = {
    "dropout": 0.1,
    "gamma_L": -0.1,      # level weights w_d = 1 - linspace(-gamma_L, gamma_L, depth)
    "lambda_L": 1.0,      # weight of the local (per-level) loss
    "lambda_H": 0.7,      # weight of the hierarchical loss
    "nonlinear": "relu",  # relu | tanh, between levels
}

# DB-BHCN-AWX has no hierarchical loss, hence no lambda_H; its loss weights are the original's.
AWX_DEFAULTS = {
    "dropout": 0.1,
    "gamma_L": -0.34,
    "lambda_L": 0.73,
    "nonlinear": "relu",
    "awx_norm": 5,        # n of the n-norm over the leaves under a class; <= 0: max
}

CHOICES = {"nonlinear": ("relu", "tanh")}
KEY_HELP = {
    "gamma_L": "level weights w_d = 1 - linspace(-gamma_L, gamma_L, depth)",
    "lambda_L": "weight of the local (per-level) loss",
    "lambda_H": "weight of the hierarchical loss",
    "nonlinear": "activation between levels",
    "awx_norm": "n of the n-norm over the leaves under a class; <= 0: max",
}

# Tuning ranges around the original's defaults.
COMMON_SPACE = {
    "encoder_lr": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True},
    "classifier_lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "gamma_L": {"type": "float", "low": -0.5, "high": 0.5},
}
SEARCH_SPACES = {
    "db_bhcn": {**COMMON_SPACE,
                "lambda_L": {"type": "float", "low": 0.5, "high": 1.5},
                "lambda_H": {"type": "float", "low": 0.0, "high": 1.5}},
    "db_bhcn_awx": {**COMMON_SPACE,
                    "lambda_L": {"type": "float", "low": 0.3, "high": 1.5},
                    "awx_norm": {"type": "categorical", "choices": [0, 1, 2, 5, 10]}},
}



@hookimpl
def ktt_register_models(register):
    register(ModelSpec(
        name="db_bhcn",
        service="ktt_db_bhcn.bentoml.service:DbBhcnService",
        display_name="BHCN head",
        head="ktt_db_bhcn.model:BHCNHead", key_help=KEY_HELP,
        defaults=BHCN_DEFAULTS,
        choices=CHOICES,
        search_space=SEARCH_SPACES["db_bhcn"],
        description="Encoder, then one layer per level fed the text vector and the level above; "
                    "level-weighted local loss plus a hierarchical loss.",
    ))
    register(ModelSpec(
        name="db_bhcn_awx",
        service="ktt_db_bhcn.bentoml.service:DbBhcnAwxService",
        display_name="BHCN+AWX head",
        head="ktt_db_bhcn.model:BHCNAWXHead", key_help=KEY_HELP,
        defaults=AWX_DEFAULTS,
        choices=CHOICES,
        search_space=SEARCH_SPACES["db_bhcn_awx"],
        description="BHCN layers; every class scores the n-norm (or max) of the sigmoid scores "
                    "of its leaves (AWX), so parents never score below their children.",
    ))
