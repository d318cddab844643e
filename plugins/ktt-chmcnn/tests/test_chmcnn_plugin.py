"""db_achmcnn through the core's conformance kit, as any plugin would test itself."""
from ktt_core.testing import check_model, make_tiny_encoder

FAST = ["--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2", "--set", "scheduler=constant",
        "--set", "train_batch_size=16",
        "--set", "h_dropout=0.0"]


def test_db_achmcnn_conforms(tmp_path):
    encoder = make_tiny_encoder(tmp_path / "encoder")
    check_model("db_achmcnn", tmp_path / "ws", epochs=4, export=False, train_args=["--set", f"encoder={encoder}", *FAST])
