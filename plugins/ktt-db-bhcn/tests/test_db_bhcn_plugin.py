"""db_bhcn and db_bhcn_awx through the core's conformance kit, as any plugin would test itself."""
import pytest

from ktt_core.testing import check_model, make_tiny_encoder

FAST = ["--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2", "--set", "scheduler=constant",
        "--set", "train_batch_size=16",
        "--set", "dropout=0.0"]


@pytest.mark.parametrize("model", ["db_bhcn", "db_bhcn_awx"])
def test_bhcn_models_conform(tmp_path, model):
    encoder = make_tiny_encoder(tmp_path / "encoder")
    # ONNX export of these heads is covered by the core's tests; here the commands a user runs.
    check_model(model, tmp_path / "ws", epochs=4, export=model == "db_bhcn",
                train_args=["--set", f"encoder={encoder}", *FAST])
