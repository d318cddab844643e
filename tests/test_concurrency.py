"""Concurrency and interruption with real processes: one writer per dataset and per run
(ktt_core.locks), Ctrl-C reported as an interruption (ktt_core.interrupts), and the
temporaries of a killed writer removed by the next write (ktt_core.files)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import synthetic_rows
from helpers import assert_clean_error

from ktt_core.checkpoint import load_checkpoint
from ktt_core.data.datasets import Dataset
from ktt_core.files import HOST_TAG, atomic_path, atomic_write_text
from ktt_core.locks import lock_dataset, lock_run
from ktt_core.workspace import Workspace

BUSY = "is being written by another ktt process"
QUICK = ("--device", "cpu", "--set", "train_batch_size=16", "--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2",
         "--set", "scheduler=constant")
WAIT = 600  # generous: the machine may be slow; nothing here measures time

# The real CLI, stopped inside a write until its stdin gets a line (or until a signal):
# inside the dataset folder's write (after the temporary folder exists), or inside
# torch.save of last.pt (after the temporary file is complete, before the rename).
PAUSING_CLI = """
import sys
from pathlib import Path

def pause(where):
    print("PAUSED " + where, flush=True)
    sys.stdin.readline()

if sys.argv[1] == "dataset":
    import ktt_core.data.datasets as datasets
    write_table = datasets.pq.write_table
    def pausing_write(table, where, *args, **kwargs):
        write_table(table, where, *args, **kwargs)
        if Path(where).name == "train.parquet":
            pause(str(Path(where).parent))
    datasets.pq.write_table = pausing_write
else:
    import torch
    save = torch.save
    def pausing_save(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        name = getattr(f, "name", f)  # a path, or the temporary file's handle
        if Path(name).name.startswith(".last.pt."):
            if hasattr(f, "flush"):
                f.flush()
            pause(str(name))
    torch.save = pausing_save

from ktt_core.cli import main
sys.argv[1:2] = []
sys.argv[0] = "ktt"
main()
"""


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def default_sigint():
    # A child started from a shell's background job would inherit an ignored SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, pause: str | None = None) -> subprocess.Popen:
    """``ktt ARGS`` in a new process (``pause``: the PAUSING_CLI at that write)."""
    command = [sys.executable, "-c", PAUSING_CLI, pause] if pause else [sys.executable, "-m", "ktt_core"]
    return subprocess.Popen([*command, *map(str, args)], env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # noqa: PLW1509 - the tests start no threads of their own


def wait_paused(proc: subprocess.Popen) -> str:
    """Read the paused child's output up to its PAUSED line; returns where it paused."""
    for line in proc.stdout:
        if line.startswith("PAUSED "):
            return line.split(" ", 1)[1].strip()
    proc.wait(WAIT)
    pytest.fail(f"ended without pausing (exit {proc.returncode}): {proc.stderr.read()[-3000:]}")


def run_ktt(*args) -> subprocess.CompletedProcess:
    """``ktt ARGS`` in a new process, to its end."""
    return subprocess.run([sys.executable, "-m", "ktt_core", *map(str, args)], env=env(), capture_output=True,
                          text=True, timeout=WAIT, check=False)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=WAIT)
    return out, err


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    os.kill(proc.pid, sig)
    proc.communicate(timeout=WAIT)


def one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err[-3000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def import_args(workspace: Path, csv: Path, name: str = "shop", *extra) -> list:
    return ["--workspace", workspace, "import", csv, name, "--text", "title", "--labels", "category",
            "--sep", " > ", *extra]


@pytest.fixture
def big_csv(tmp_path) -> Path:
    path = tmp_path / "products.csv"
    synthetic_rows(20_000).to_csv(path, index=False)
    return path


def assert_whole(workspace: Path, name: str = "shop", rows: int | None = None) -> None:
    """The dataset is complete and readable, and nothing of KTT's is left beside it."""
    dataset = Dataset(Workspace(workspace).dataset_dir(name))
    total = sum(len(dataset.split(s)) for s in ("train", "val", "test"))
    assert rows is None or total == rows
    assert json.loads((dataset.directory / "import.json").read_text())["report"]["kept"] == total
    leftovers = sorted(p.name for p in (workspace / "datasets").iterdir() if p.name.startswith(f".{name}."))
    assert not leftovers, leftovers


# -- datasets -----------------------------------------------------------------------------------

def test_an_import_of_a_locked_dataset_fails_at_once_and_writes_nothing(ktt, workspace, synthetic_csv):
    ws = Workspace(workspace)
    with lock_dataset(ws, "shop") as lock:
        assert lock == workspace / "datasets" / ".shop.lock" and lock.is_file()
        assert ws.dataset_names() == []  # a lock file is not a dataset
        result = ktt(*import_args(workspace, synthetic_csv)[2:], expect=1)
        assert_clean_error(result, "dataset 'shop' is being written by another ktt process "
                                   "(lock datasets/.shop.lock); try again when it ends")
        assert sorted(p.name for p in (workspace / "datasets").iterdir()) == [".shop.lock"]
        # Another name is another lock.
        ktt(*import_args(workspace, synthetic_csv, "other")[2:])
    assert not lock.exists(), "the lock file goes with the lock"
    ktt(*import_args(workspace, synthetic_csv)[2:])
    assert_whole(workspace)
    assert sorted(p.name for p in (workspace / "datasets").iterdir()) == ["other", "shop"]


def test_two_imports_of_one_name_at_once(workspace, big_csv):
    first, second = (start(*import_args(workspace, big_csv)) for _ in range(2))
    results = [(p, *finish(p)) for p in (first, second)]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 1], [(p.returncode, err[-2000:]) for p, _, err in results]
    (_, _, err), = [r for r in results if r[0].returncode == 1]
    line = one_error_line(err, "dataset 'shop'")
    assert BUSY in line or "already exists" in line, line  # refused while written, or after
    assert_whole(workspace, rows=20_000)


def test_a_second_writer_is_refused_mid_write_and_a_killed_writers_temp_goes_next_time(workspace, big_csv):
    datasets = workspace / "datasets"
    first = start(*import_args(workspace, big_csv), pause="dataset")
    try:
        temp = Path(wait_paused(first))  # half-written: train.parquet only
        assert temp.parent == datasets and temp.name.startswith(f".shop.{first.pid}-{HOST_TAG}.")
        for extra in ((), ("--force",)):
            second = run_ktt(*import_args(workspace, big_csv), *extra)
            assert second.returncode == 1
            one_error_line(second.stderr, f"dataset 'shop' {BUSY} (lock datasets/.shop.lock)")
        assert temp.is_dir() and not (datasets / "shop").exists()
    finally:
        kill(first)  # SIGKILL, in the middle of writing
    # The kernel released its lock; its temporary folder and lock file stay behind.
    assert temp.is_dir() and (datasets / ".shop.lock").is_file()
    mine = [datasets / ".shop.notes.tmp", datasets / ".foo.tmp", datasets / f".other.999999-{HOST_TAG}.abcdefgh.tmp"]
    for path in mine:
        path.write_text("not KTT's to remove")
    done = run_ktt(*import_args(workspace, big_csv))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not temp.exists(), "the killed writer's temporary folder is removed by the next write"
    assert all(path.read_text() == "not KTT's to remove" for path in mine)
    for path in mine:
        path.unlink()
    assert_whole(workspace, rows=20_000)


def read_position(pid: int, path: Path) -> int:
    """How far process ``pid`` has read into ``path`` (0 while it has not opened it)."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                return int(info.split("pos:")[1].split()[0])
    except OSError:
        pass  # the process or an fd went away while listed
    return 0


def test_ctrl_c_during_a_csv_import_is_an_interruption_not_a_read_error(workspace, tmp_path):
    csv = tmp_path / "big.csv"
    paths = ["Food > Fruit", "Food > Bakery", "Home > Garden", "Toys > Games"]
    with open(csv, "w", encoding="utf-8") as fh:
        fh.write("title,category\n")
        fh.writelines(f"product number {i} with a few more words,{paths[i % 4]}\n" for i in range(2_000_000))
    proc = start(*import_args(workspace, csv))
    # Interrupt it while pandas' C parser reads the file: once it has read a few MB of it.
    deadline = time.monotonic() + WAIT
    while proc.poll() is None and time.monotonic() < deadline and read_position(proc.pid, csv) < 4 << 20:
        time.sleep(0.01)
    assert proc.poll() is None, "the import ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc)
    assert proc.returncode == 130, err[-3000:]
    one_error_line(err, "interrupted (Ctrl-C)")
    assert "cannot read" not in err
    assert not (workspace / "datasets").exists() or not any((workspace / "datasets").iterdir())


# -- runs ---------------------------------------------------------------------------------------

@pytest.fixture
def run(ktt, workspace, synthetic_csv, tiny_encoder) -> Path:
    """A db_linear run on 'shop' trained for one epoch, with its last.pt."""
    ktt(*import_args(workspace, synthetic_csv)[2:])
    ktt("train", "db_linear", "shop", "--epochs", "1", "--set", f"encoder={tiny_encoder}", "--keep-last", *QUICK)
    (run,) = (workspace / "runs" / "db_linear" / "shop").iterdir()
    assert (run / "last.pt").is_file()
    return run


def epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_resume_test_or_export_of_a_locked_run_is_refused(ktt, workspace, run):
    shown = f"runs/db_linear/shop/{run.name}"
    with lock_run(run):
        result = ktt("train", "db_linear", "shop", "--resume", run, "--epochs", "2", "--device", "cpu", expect=1)
        assert_clean_error(result, f"run {shown} {BUSY} (lock {shown}/.lock); try again when it ends")
        result = ktt("test", "db_linear", "shop", "--run", run, expect=1)
        assert BUSY in result.output.strip().splitlines()[-1] and "Traceback" not in result.output
        result = ktt("export", "db_linear", "shop", "--run", run, "--onnx", expect=1)  # into RUN/export
        assert_clean_error(result, f"run {shown} {BUSY}")
    assert epochs(run) == [1] and not (run / "test_metrics.json").exists() and not (run / "export").exists()
    assert not (run / ".lock").exists()
    ktt("train", "db_linear", "shop", "--resume", run, "--epochs", "2", "--device", "cpu")
    assert epochs(run) == [1, 2]


def test_two_resumes_of_one_run_and_a_sigkill_inside_a_checkpoint_write(ktt, workspace, run):
    resume = ("--workspace", workspace, "train", "db_linear", "shop", "--resume", run, "--epochs", "3", "--device", "cpu")
    first = start(*resume, pause="checkpoint")
    try:
        temp = Path(wait_paused(first))  # epoch 2's last.pt, complete under its temporary name
        assert temp.parent == run and temp.name.startswith(f".last.pt.{first.pid}-{HOST_TAG}.")
        second = run_ktt(*resume)
        assert second.returncode == 1, second.stderr[-3000:]
        one_error_line(second.stderr, f"run runs/db_linear/shop/{run.name} {BUSY} "
                                      f"(lock runs/db_linear/shop/{run.name}/.lock)")
    finally:
        kill(first)
    size = temp.stat().st_size
    assert size > 100_000, "a whole checkpoint lies there under a temporary name"
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == 1

    ktt(*resume[2:])  # the next write of last.pt removes the killed writer's temporary file
    assert not temp.exists()
    assert epochs(run) == [1, 2, 3], "each epoch logged once"
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == 3
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_ctrl_c_during_training_keeps_the_last_checkpoint_and_says_how_to_resume(ktt, workspace, run):
    proc = start("--workspace", workspace, "train", "db_linear", "shop", "--resume", run, "--epochs", "2",
                 "--device", "cpu", pause="checkpoint")
    wait_paused(proc)  # inside the write of epoch 2's last.pt
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc)
    assert proc.returncode == 130, err[-3000:]
    one_error_line(err, "interrupted (Ctrl-C)")
    assert (f"interrupted: {run} keeps its last checkpoint (last.pt); continue with: "
            f"ktt train db_linear shop --resume {run}") in out
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "no temporary or lock file left"
    ktt("train", "db_linear", "shop", "--resume", run, "--epochs", "2", "--device", "cpu")
    assert epochs(run) == [1, 2]


# -- temporary files ----------------------------------------------------------------------------

KILLED_WRITER = """
import sys
from ktt_core.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * (32 << 20))
    print(tmp, flush=True)
    sys.stdin.readline()
"""


def test_the_next_write_removes_a_killed_writers_temp_and_nothing_else(tmp_path):
    target = tmp_path / "best.pt"
    target.write_text("previous version")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], env=env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    temp = Path(writer.stdout.readline().strip())
    kill(writer)
    assert temp.stat().st_size == 32 << 20 and target.read_text() == "previous version"

    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        kept = [tmp_path / ".foo.tmp", tmp_path / ".best.pt.notes.tmp", tmp_path / ".best.pt.tmp",
                tmp_path / f".best.pt.{live.pid}-{HOST_TAG}.abcdefgh.tmp",     # a writer still running
                tmp_path / f".best.pt.{writer.pid}-ffffff.abcdefgh.tmp",    # another host's writer
                tmp_path / f".other.pt.{writer.pid}-{HOST_TAG}.abcdefgh.tmp"]  # another target
        for path in kept:
            path.write_text("keep")
        atomic_write_text(target, "new version")
        assert not temp.exists()
        assert target.read_text() == "new version"
        assert all(path.read_text() == "keep" for path in kept)
        with atomic_path(target) as tmp:  # its own temporary name carries its PID and host
            assert tmp.name.startswith(f".best.pt.{os.getpid()}-{HOST_TAG}.") and tmp.name.endswith(".tmp")
            tmp.write_text("newest")
    finally:
        live.communicate(b"", timeout=WAIT)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["best.pt", *(p.name for p in kept)])
