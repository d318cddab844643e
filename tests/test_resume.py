"""Crash-safe training: ``ktt train --resume`` after a real SIGKILL, and hashed checkpoints."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import assert_clean_error, environment

from ktt_core.checkpoint import content_digest, load_checkpoint
from ktt_core.errors import KttError

QUICK = ("--set", "train_batch_size=16", "--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2")

# Runs the real CLI in a subprocess, but stops (and waits to be killed) just before it
# would write last.pt at epoch 2, step 6: steps 5 and 6 are trained and not yet saved,
# so the resumed run must redo them. Waiting there makes the kill point exact, where
# polling files would race a training this fast.
PAUSING_CLI = """
import sys, time
import ktt_core.training as training
from ktt_core.cli import main

save = training.save_checkpoint

def pausing_save(path, model, optimizer_state=None, training_state=None, resume_state=None):
    state = training_state or {}
    if (state.get("epoch"), state.get("step"), state.get("epoch_done")) == (2, 6, False):
        print("PAUSED", flush=True)
        time.sleep(600)
    return save(path, model, optimizer_state, training_state, resume_state)

training.save_checkpoint = pausing_save
sys.argv[0] = "ktt"
main()
"""


@pytest.fixture
def shop(ktt, synthetic_csv):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    return "shop"


def subprocess_env() -> dict:
    # One thread: CPU results are then bit-reproducible between processes.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1"}


def run_dirs(workspace) -> set:
    base = workspace / "runs" / "db_linear" / "shop"
    return set(base.iterdir()) if base.is_dir() else set()


def new_run(workspace, before: set):
    (run,) = run_dirs(workspace) - before
    return run


def epochs_of(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(shop, tiny_encoder, workspace):
    train = ["--workspace", str(workspace), "train", "db_linear", "shop", "--epochs", "3", "--device", "cpu",
             "--seed", "7", "--set", f"encoder={tiny_encoder}", "--keep-last", *QUICK]
    env = subprocess_env()

    # 1. The reference: the same seed, never interrupted, no mid-epoch checkpoints.
    before = run_dirs(workspace)
    done = subprocess.run([sys.executable, "-m", "ktt_core", *train], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = new_run(workspace, before)

    # 2. The same run, checkpointing every 2 steps, killed with SIGKILL inside epoch 2.
    before = run_dirs(workspace)
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_CLI, *train, "--checkpoint-every", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 600
        for line in proc.stdout:  # its log lines, up to the pause
            if line.strip() == "PAUSED" or time.monotonic() > deadline:
                break
        else:
            pytest.fail(f"training ended without pausing (exit {proc.wait()})")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    crashed = new_run(workspace, before)
    state = load_checkpoint(crashed / "last.pt")["training"]
    assert (state["epoch"], state["step"], state["epoch_done"]) == (2, 4, False)
    assert [e["epoch"] for e in epochs_of(crashed)] == [1]
    # As if a crash had also hit after logging an epoch the checkpoint does not hold, and
    # in the middle of writing a line: both must go.
    with open(crashed / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 2, "train_loss": 99.0}) + "\n" + '{"epoch": 2, "train_lo')

    # 3. Resume it: same folder, same end.
    resumed = subprocess.run([sys.executable, "-m", "ktt_core", "--workspace", str(workspace), "train",
                              "db_linear", "shop", "--resume", str(crashed), "--device", "cpu"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "epoch 2, step 4" in resumed.stdout
    assert run_dirs(workspace) == before | {crashed}, "no new run folder"

    assert [e["epoch"] for e in epochs_of(crashed)] == [1, 2, 3]
    assert without_seconds(epochs_of(crashed)) == without_seconds(epochs_of(reference))
    for name in ("last.pt", "best.pt"):
        ours, theirs = load_checkpoint(crashed / name), load_checkpoint(reference / name)
        assert ours["training"]["epoch"] == theirs["training"]["epoch"]
        assert ours["state"]["state_dict"].keys() == theirs["state"]["state_dict"].keys()
        for key, value in theirs["state"]["state_dict"].items():
            assert torch.equal(ours["state"]["state_dict"][key], value), (name, key)
    ours, theirs = (load_checkpoint(run / "last.pt")["optimizer"]["state"] for run in (crashed, reference))
    for index, moments in theirs.items():
        for key, value in moments.items():
            assert torch.equal(ours[index][key], value), (index, key)


def train_in_process(ktt, workspace, encoder, *extra, epochs=2):
    before = run_dirs(workspace)
    ktt("train", "db_linear", "shop", "--epochs", epochs, "--device", "cpu", "--set", f"encoder={encoder}",
        "--keep-last", *QUICK, *extra)
    return new_run(workspace, before)


def test_a_finished_run_keeps_weights_only_unless_asked(ktt, shop, tiny_encoder, workspace):
    before = run_dirs(workspace)
    out = ktt("train", "db_linear", "shop", "--epochs", "2", "--device", "cpu", "--set", f"encoder={tiny_encoder}",
              *QUICK).output
    run = new_run(workspace, before)
    assert (run / "best.pt").is_file() and not (run / "last.pt").exists()
    best = load_checkpoint(run / "best.pt")
    assert best["optimizer"] is None and best["resume"] is None  # weights (and what they are) only
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) / 1e6
    assert f"run folder size: {size:.1f} MB (last.pt removed" in out
    assert not json.loads((run / "config.json").read_text())["keep_last"]
    assert_clean_error(ktt("train", "db_linear", "shop", "--resume", run, "--epochs", "3", expect=1),
                       "no last.pt", "--keep-last")

    # --keep-last is remembered by the run: a resumed run keeps it too.
    kept = train_in_process(ktt, workspace, tiny_encoder, epochs=1)
    assert json.loads((kept / "config.json").read_text())["keep_last"] is True
    out = ktt("train", "db_linear", "shop", "--resume", kept, "--epochs", "2", "--device", "cpu").output
    assert (kept / "last.pt").is_file() and load_checkpoint(kept / "last.pt")["training"]["epoch"] == 2
    # "trained in" counts both sessions: the sum of the epochs' own times.
    total = sum(e["seconds"] for e in epochs_of(kept)) / 60
    found = re.search(r"trained in ([0-9.]+) (s|min) \(([0-9.]+) (s|min) of it in this session\)", out)
    assert found, out
    minutes = lambda value, unit: float(value) / (60 if unit == "s" else 1)  # noqa: E731
    shown, session = minutes(*found.group(1, 2)), minutes(*found.group(3, 4))
    # Both sessions, not only the resumed one (whole seconds: a short run may round alike).
    assert shown >= total - 0.05 and shown >= session


def test_progress_lines_without_a_terminal(ktt, shop, tiny_encoder, workspace):
    # CliRunner's output is not a terminal: tqdm draws nothing, lines come instead.
    with environment(KTT_PROGRESS_SECONDS="0"):
        out = ktt("train", "db_linear", "shop", "--epochs", "1", "--device", "cpu",
                  "--set", f"encoder={tiny_encoder}", *QUICK).output
    lines = [line for line in out.splitlines() if line.startswith("epoch 1/1: step ")]
    assert lines and re.match(r"epoch 1/1: step 1/\d+ \(\d+%\), train_loss \d+\.\d{4}, [0-9.]+ steps/s", lines[0])


def test_resume_refuses_bad_run_folders_and_conflicting_config(ktt, shop, tiny_encoder, workspace, tmp_path,
                                                                synthetic_csv):
    run = train_in_process(ktt, workspace, tiny_encoder)
    missing = tmp_path / "nowhere"
    assert_clean_error(ktt("train", "db_linear", "shop", "--resume", missing, expect=1),
                       str(missing), "no such run folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(ktt("train", "db_linear", "shop", "--resume", empty, expect=1), "no last.pt")
    assert_clean_error(ktt("train", "db_bhcn", "shop", "--resume", run, expect=1),
                       "holds a run of db_linear on shop, not db_bhcn on shop")
    ktt("import", synthetic_csv, "shop2", "--text", "title", "--labels", "category", "--sep", " > ")
    assert_clean_error(ktt("train", "db_linear", "shop2", "--resume", run, expect=1),
                       "holds a run of db_linear on shop, not db_linear on shop2")
    assert_clean_error(ktt("train", "db_linear", "shop,shop2", "--resume", run, expect=1), "one MODEL and one DATASET")
    assert_clean_error(ktt("train", "db_linear", "shop", "--resume", run, "--set", "encoder_lr=0.5", expect=1),
                       "encoder_lr", "keeps its config")
    assert_clean_error(ktt("train", "db_linear", "shop", "--resume", run, "--epochs", "1", expect=1),
                       "only train longer")

    # A damaged last.pt is named, not trusted.
    good = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(good[: len(good) // 2])
    assert_clean_error(ktt("train", "db_linear", "shop", "--resume", run, expect=1), "last.pt", "corrupt")
    # A checkpoint from before resume state existed (version 1) loads, but cannot be resumed.
    raw = torch.load(run / "best.pt", weights_only=True)
    legacy = {k: v for k, v in raw.items() if k not in ("sha256", "resume")}
    torch.save({**legacy, "version": 1, "training_json": '{"epoch": 2, "best_score": 0.5}'}, run / "last.pt")
    assert_clean_error(ktt("train", "db_linear", "shop", "--resume", run, expect=1), "last.pt", "no resume state")
    (run / "last.pt").write_bytes(good)


def test_resume_of_a_finished_run_says_so_or_trains_the_extra_epochs(ktt, shop, tiny_encoder, workspace):
    run = train_in_process(ktt, workspace, tiny_encoder)
    metrics = (run / "metrics.jsonl").read_text()
    last = (run / "last.pt").read_bytes()
    out = ktt("train", "db_linear", "shop", "--resume", run).output
    assert "already finished (2 of 2 epochs)" in out
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "last.pt").read_bytes() == last

    # Repeating the run's own settings is no conflict; --epochs 3 trains epoch 3 only.
    out = ktt("train", "db_linear", "shop", "--resume", run, "--epochs", "3", *QUICK, "--device", "cpu").output
    assert "from the end of epoch 2 of 3" in out and "epoch 3:" in out and "epoch 1:" not in out
    assert [e["epoch"] for e in epochs_of(run)] == [1, 2, 3]
    assert (run / "metrics.jsonl").read_text().startswith(metrics)
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 3
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == 3
    assert "already finished (3 of 3 epochs)" in ktt("train", "db_linear", "shop", "--resume", run).output


@pytest.mark.parametrize("frozen", [False, True], ids=["full-model", "frozen-encoder"])
def test_resume_at_an_epoch_end_continues_exactly(ktt, shop, tiny_encoder, workspace, frozen):
    # With the constant scheduler, 1 epoch then --resume --epochs 2 is the 2-epoch run.
    extra = ("--set", "scheduler=constant", *(("--freeze-encoder",) if frozen else ()))
    straight = train_in_process(ktt, workspace, tiny_encoder, *extra, epochs=2)
    stopped = train_in_process(ktt, workspace, tiny_encoder, *extra, epochs=1)
    ktt("train", "db_linear", "shop", "--resume", stopped, "--epochs", "2", "--device", "cpu")
    assert without_seconds(epochs_of(stopped)) == without_seconds(epochs_of(straight))
    ours, theirs = (load_checkpoint(run / "last.pt")["state"]["state_dict"] for run in (stopped, straight))
    assert all(torch.equal(ours[key], value) for key, value in theirs.items())


def test_checkpoint_every_writes_mid_epoch_position(ktt, shop, tiny_encoder, workspace):
    # The epoch-end checkpoint replaces the mid-epoch ones; the setting is kept for a resume.
    run = train_in_process(ktt, workspace, tiny_encoder, "--checkpoint-every", "3", epochs=1)
    assert json.loads((run / "config.json").read_text())["checkpoint_every"] == 3
    state = load_checkpoint(run / "last.pt")
    assert state["training"]["epoch_done"] is True and state["resume"]["scheduler"]["last_epoch"] > 0
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], "no temporary files left"


def test_corrupt_or_truncated_checkpoint_is_a_one_line_error(ktt, shop, tiny_encoder, workspace, tmp_path):
    run = train_in_process(ktt, workspace, tiny_encoder, epochs=1)
    data = bytearray((run / "best.pt").read_bytes())
    flipped = tmp_path / "flipped.pt"
    middle = len(data) // 2  # inside the weights: the largest part of the file
    data[middle:middle + 16] = bytes(b ^ 0xA5 for b in data[middle:middle + 16])
    flipped.write_bytes(bytes(data))
    result = ktt("test", "db_linear", "shop", "--checkpoint", flipped, expect=1)
    assert_clean_error(result, str(flipped), "checkpoint is corrupt (content hash mismatch)")

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "best.pt").read_bytes()[: len(data) * 2 // 3])
    result = ktt("test", "db_linear", "shop", "--checkpoint", truncated, expect=1)
    assert_clean_error(result, str(truncated), "corrupt")
    # The intact file still works.
    assert json.loads(ktt("test", "db_linear", "shop", "--checkpoint", run / "best.pt", "--json").output)["rows"] > 0


def test_content_hash_covers_every_entry_and_legacy_files_load(ktt, shop, tiny_encoder, workspace, tmp_path):
    run = train_in_process(ktt, workspace, tiny_encoder, epochs=1)
    raw = torch.load(run / "best.pt", weights_only=True)
    assert raw["version"] == 3 and raw["sha256"] == content_digest({k: v for k, v in raw.items() if k != "sha256"})

    def saved(name: str, payload: dict):
        torch.save(payload, tmp_path / name)
        return tmp_path / name

    # A JSON string changed without re-hashing is caught, like a changed tensor.
    edited = {**raw, "config_json": raw["config_json"].replace('"seed": 0', '"seed": 1')}
    assert edited["config_json"] != raw["config_json"]
    with pytest.raises(KttError, match="content hash mismatch"):
        load_checkpoint(saved("edited.pt", edited))
    # Version 2 needs the hash; version 1 (before it existed) is accepted unverified.
    unhashed = {k: v for k, v in raw.items() if k != "sha256"}
    with pytest.raises(KttError, match="content hash missing"):
        load_checkpoint(saved("unhashed.pt", unhashed))
    # Versions 1 and 2 kept the encoder model's state at the top level; it loads the same.
    old_layout = {**{k: v for k, v in unhashed.items() if k != "state"}, **raw["state"], "version": 1}
    legacy = load_checkpoint(saved("legacy.pt", old_layout))
    assert legacy["model"] == "db_linear" and legacy["state"]["state_dict"].keys() == raw["state"]["state_dict"].keys()
