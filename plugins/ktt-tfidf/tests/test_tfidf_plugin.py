"""tfidf_lsgd and tfidf_hsgd through the core's conformance kit, as any plugin would test itself."""
import pytest

from ktt_core.testing import check_model


@pytest.mark.parametrize("model", ["tfidf_lsgd", "tfidf_hsgd"])
def test_tfidf_models_conform(tmp_path, model):
    metrics = check_model(model, tmp_path / "ws", train_args=["--set", "n_jobs=1", "--set", "min_df=1"])
    assert metrics["exact_path_accuracy"] > 0.9
