"""KTT plugin: DistilBERT+Linear (DB-Linear), the leaf classifier of the original KTT."""
from ktt_core import hookimpl
from ktt_core.registry import ModelSpec

# The core's encoder defaults (learning rates and schedule for the packaged MiniLM) with a
# lighter dropout than the original's 0.25; the original KTT's values are in
# examples/original-db-linear.yaml.
DEFAULTS = {
    "dropout": 0.1,
    "label_smoothing": 0.0,
}


# Tuning ranges around the original's defaults, plus what this head adds.
SEARCH_SPACE = {
    "encoder_lr": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True},
    "classifier_lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "train_batch_size": {"type": "categorical", "choices": [16, 32, 64]},
}



@hookimpl
def ktt_register_models(register):
    register(ModelSpec(
        name="db_linear",
        service="ktt_db_linear.bentoml.service:DbLinearService",
        display_name="Linear head",
        head="ktt_db_linear.model:LinearLeafHead",
        defaults=DEFAULTS,
        search_space=SEARCH_SPACE,
        description="Encoder, dropout, one linear layer over the leaf classes; "
                    "ancestors follow from the predicted leaf.",
    ))
