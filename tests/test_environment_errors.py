"""The environment fails in one line (issue 11, family 6), with real failures of the machine.

- a read-only workspace: ``chmod -R a-w`` when the tests run as a normal user; as root
  (who writes anyway) the workspace is bind-mounted read-only in a private mount namespace
  of the command (``unshare --mount``), so EROFS is real and nothing leaks outside it;
- a full disk: the CLI runs in a subprocess with ``RLIMIT_FSIZE`` (and SIGXFSZ ignored), so
  writes past the limit fail with EFBIG exactly as on a full file system;
- a FIFO, ``/dev/zero``, a file where a folder should be, URLs with a bad port, dataset names
  that are no BentoML tag.

Each failure must be one ``Error:`` line naming the file or value, exit status 1, no
traceback, and leave what was there intact with no temporary file behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import synthetic_rows
from helpers import environment

from ktt_core.cli import cli
from ktt_core.environment import (
    SMALL_FILE_LIMIT,
    check_url,
    read_small_file,
    require_writable,
)
from ktt_core.errors import KttError


def _invoke(workspace: Path, *args) -> str:
    result = CliRunner().invoke(cli, ["--workspace", str(workspace), *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def template(tmp_path_factory, synthetic_csv, tiny_encoder) -> Path:
    """A workspace with dataset 'shop' and one db_linear run (1 epoch, best.pt and last.pt)."""
    workspace = tmp_path_factory.mktemp("env-template") / "ws"
    _invoke(workspace, "import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    _invoke(workspace, "train", "db_linear", "shop", "--epochs", "1", "--set", f"encoder={tiny_encoder}",
            "--keep-last")
    return workspace


@pytest.fixture
def ws(template, tmp_path) -> Path:
    workspace = tmp_path / "ws"
    shutil.copytree(template, workspace)
    return workspace


def run_dir(workspace: Path) -> Path:
    return max((workspace / "runs" / "db_linear" / "shop").iterdir())


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def ktt_process(workspace: Path, *args, prefix=(), preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "ktt_core", "--workspace", str(workspace), *map(str, args)],
                          capture_output=True, text=True, preexec_fn=preexec_fn, check=False)


def assert_one_line(done: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 1, no traceback, and stderr's last line the only Error: line."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@contextlib.contextmanager
def read_only(folder: Path):
    """Yield a command prefix under which ``folder`` cannot be written (see the docstring)."""
    if os.geteuid() == 0:
        yield ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]
        return
    paths = [folder, *folder.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(modes[p] & ~0o222)
    try:
        yield []
    finally:
        for p in paths:
            p.chmod(modes[p])


READ_ONLY = ("read-only file system", "permission denied")


def test_read_only_workspace_test_prints_the_metrics_then_fails_to_save(ws):
    before = snapshot(ws)
    with read_only(ws) as prefix:
        done = ktt_process(ws, "test", "db_linear", "shop", prefix=prefix)
    line = assert_one_line(done, str(run_dir(ws) / "test_metrics.json"))
    assert any(reason in line for reason in READ_ONLY), line
    # The metrics were computed and shown before the save failed: not lost.
    assert "exact_path_accuracy" in done.stdout and "leaf_accuracy" in done.stdout, done.stdout
    assert snapshot(ws) == before and not (run_dir(ws) / "test_metrics.json").exists()


def test_read_only_workspace_import_and_train_fail_before_any_work(ws, synthetic_csv, tiny_encoder):
    before = snapshot(ws)
    with read_only(ws) as prefix:
        imported = ktt_process(ws, "import", synthetic_csv, "shop2", "--text", "title", "--labels", "category",
                               prefix=prefix)
        trained = ktt_process(ws, "train", "db_linear", "shop", "--epochs", "1", "--set", f"encoder={tiny_encoder}",
                              prefix=prefix)
    line = assert_one_line(imported, f"datasets folder {ws / 'datasets'}", "cannot write in")
    assert any(reason in line for reason in READ_ONLY), line
    line = assert_one_line(trained, f"runs folder {ws / 'runs'}", "cannot write in")
    assert any(reason in line for reason in READ_ONLY), line
    assert "epoch" not in trained.stdout + trained.stderr  # refused before training
    assert snapshot(ws) == before


def file_size_limit(limit: int):
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG, as on a full disk."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_during_import_keeps_the_previous_dataset(ws, tmp_path):
    big = tmp_path / "big.csv"
    synthetic_rows(20_000).to_csv(big, index=False)  # its splits need more than the limit
    before = snapshot(ws)
    done = ktt_process(ws, "import", big, "shop", "--force", "--text", "title", "--labels", "category",
                       "--sep", " > ", preexec_fn=file_size_limit(100_000))
    assert_one_line(done, str(ws / "datasets" / "shop"), "file too large")
    assert snapshot(ws) == before  # the old dataset whole, no temporary folder left
    assert not [p for p in (ws / "datasets").iterdir() if p.name.startswith(".")]


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_checkpoint(ws):
    run = run_dir(ws)
    last = (run / "last.pt").read_bytes()
    assert len(last) > 2_000_000
    done = ktt_process(ws, "train", "db_linear", "shop", "--resume", run, "--epochs", "2",
                       preexec_fn=file_size_limit(1_000_000))
    line = assert_one_line(done, "file too large")
    assert str(run / "last.pt") in line or str(run / "best.pt") in line, line
    assert (run / "last.pt").read_bytes() == last
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_output_under_a_file_and_small_file_reader(tmp_path):
    afile = tmp_path / "somefile.txt"
    afile.write_text("x")
    with pytest.raises(KttError, match=r"--output .*somefile\.txt is a file, not a folder"):
        require_writable(afile / "sub", f"--output {afile / 'sub' / 'out.csv'}")
    require_writable(tmp_path / "new" / "deeper", "--output")  # missing folders are fine
    assert not (tmp_path / "new").exists()  # and the check makes none

    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (SMALL_FILE_LIMIT + 1))
    with pytest.raises(KttError, match="big.yaml: the config file is larger than"):
        read_small_file(big, "config file")
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(KttError, match="pipe.yaml: the config file is a FIFO"):
        read_small_file(fifo, "config file")  # returns at once: it never opens the pipe
    with pytest.raises(KttError, match="the config file is a folder"):
        read_small_file(tmp_path, "config file")
    assert read_small_file(afile, "config file") == b"x"


@pytest.mark.parametrize("url, needle", [
    ("http://127.0.0.1:abc", "port 'abc' is not a number"),
    ("http://127.0.0.1:70000/ingest", "port '70000'"),
    ("postgresql://u:hunter2@db.example:5x32/optuna", "port '5x32'"),
])
def test_a_url_with_a_bad_port_is_named(url, needle):
    with pytest.raises(KttError, match=needle) as info:
        check_url(url, "KTT_MONITOR_URL")
    assert "hunter2" not in str(info.value)
    assert check_url("http://127.0.0.1:3001", "x") == "http://127.0.0.1:3001"


def test_the_service_and_the_monitor_client_refuse_a_bad_monitor_url():
    from ktt_core.monitoring.client import MonitorClient
    from ktt_core.serving.settings import ServiceSettings

    with environment(KTT_MONITOR_URL="http://127.0.0.1:abc"), \
            pytest.raises(KttError, match="KTT_MONITOR_URL http://127.0.0.1:abc: port 'abc'"):
        ServiceSettings.from_env("db_linear")
    with pytest.raises(KttError, match="drift monitor URL"):
        MonitorClient("http://localhost:port")


@pytest.mark.parametrize("dataset", ["Shop", "shop.", "SHOP_" + "x" * 70, "a-b_c.d", "x."])
def test_every_dataset_name_gives_a_valid_bentoml_tag(dataset):
    from bentoml._internal.tag import validate_tag_str

    from ktt_core.export.bento import model_tag_name

    name = model_tag_name("db_linear", dataset)
    validate_tag_str(name)  # raises ValueError for an invalid tag
    assert name.startswith("ktt-db_linear-")
    assert model_tag_name("db_linear", dataset) == name  # stable: re-exports find the stored model


def test_distinct_names_that_fold_together_keep_distinct_tags():
    from ktt_core.export.bento import model_tag_name

    long_a, long_b = "shop" + "a" * 60 + "1", "shop" + "a" * 60 + "2"
    assert model_tag_name("db_linear", long_a) != model_tag_name("db_linear", long_b)
    assert model_tag_name("db_linear", "shop.") != model_tag_name("db_linear", "shop")


def test_export_bento_of_a_dataset_whose_name_is_no_tag(tmp_path, synthetic_csv, tiny_encoder):
    """Uppercase and 64 characters long: BentoML refused the tag ktt-db_linear-<name>."""
    workspace = tmp_path / "ws"
    name = "Shop_" + "X" * 59
    _invoke(workspace, "import", synthetic_csv, name, "--text", "title", "--labels", "category", "--sep", " > ")
    _invoke(workspace, "train", "db_linear", name, "--epochs", "1", "--set", f"encoder={tiny_encoder}")
    # In a child process: BentoML keeps the first store it opens for the life of a process.
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run([sys.executable, "-m", "ktt_core", "--workspace", str(workspace), "export", "db_linear",
                           name, "--bento"], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    tag = done.stdout.split("BentoML model saved: ")[1].split()[0]
    name_part = tag.split(":")[0]
    assert len(name_part) <= 63 and name_part == name_part.lower()
    (stored,) = [p for p in (tmp_path / "bentoml" / "models").iterdir() if p.is_dir()]
    assert stored.name == name_part and name in (stored / tag.split(":")[1] / "model.yaml").read_text()
