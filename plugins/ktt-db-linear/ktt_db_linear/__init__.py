"""KTT plugin: DistilBERT+Linear (DB-Linear), the leaf classifier of the original KTT."""
from ktt_core import hookimpl
from ktt_core.registry import ModelSpec

from ktt_db_linear.model import LinearLeafHead

# Defaults of the original KTT's DB-Linear.
DEFAULTS = {
    "encoder_lr": 1e-5,
    "classifier_lr": 1e-5,
    "dropout": 0.25,
    "train_batch_size": 32,
    "eval_batch_size": 64,
    "max_length": 64,
    "label_smoothing": 0.0,
}


@hookimpl
def ktt_register_models(register):
    register(ModelSpec(
        name="db_linear",
        display_name="DistilBERT+Linear",
        head=LinearLeafHead,
        defaults=DEFAULTS,
        description="Encoder, dropout, one linear layer over the leaf classes; "
                    "ancestors follow from the predicted leaf.",
    ))
