"""DVC versioning of datasets and checkpoints, on a real git + DVC repository and a local remote."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import assert_clean_error

from ktt_core import versioning


@pytest.fixture(autouse=True)
def dvc_env(monkeypatch, tmp_path):
    """No analytics, a private site cache and a git identity (CI machines have none)."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "KTT Tests")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "ktt-tests@example.invalid")




def import_args(csv):
    return ("import", csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def set_remote_url(root: Path, url: str | None) -> None:
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        with repo.config.edit() as conf:
            if url is None:
                del conf["core"]["remote"]
            else:
                conf["remote"]["ktt"]["url"] = url
    finally:
        repo.close()


def test_round_trip_through_the_remote(ktt, workspace, tmp_path, synthetic_csv, tiny_encoder):
    remote = tmp_path / "remote"
    out = ktt("init", "--dvc", "--remote", remote).output
    assert (workspace / ".git").is_dir() and (workspace / ".dvc").is_dir()
    assert (workspace / "datasets").is_dir() and (workspace / "runs").is_dir()
    assert str(remote) in out and str(remote) in (workspace / ".dvc" / "config").read_text()

    ktt(*import_args(synthetic_csv), "--dvc")
    assert (workspace / "datasets" / "shop.dvc").is_file()
    pushed = files_under(remote)
    assert pushed, "import --dvc pushed nothing to the remote"

    out = ktt("train", "db_linear", "shop", "--epochs", "1", "--set", f"encoder={tiny_encoder}", "--dvc").output
    run = next((workspace / "runs" / "db_linear" / "shop").iterdir())
    assert (run / "best.pt.dvc").is_file() and not (run / "last.pt").exists()  # finished: best.pt only
    assert "pushed to remote 'ktt'" in out
    assert len(files_under(remote)) > len(pushed)
    # The token cache training wrote into the dataset folder is not part of the tracked data.
    assert (workspace / "datasets" / "shop" / "cache").is_dir()
    assert "/datasets/*/cache/" in (workspace / ".dvcignore").read_text()
    expected = ktt("test", "db_linear", "shop", "--json").output

    # Checkpoint and local DVC cache gone: pulled back from the remote.
    (run / "best.pt").unlink()
    shutil.rmtree(workspace / ".dvc" / "cache")
    result = ktt("test", "db_linear", "shop", "--json")
    assert f"fetched {run / 'best.pt'} from DVC (remote 'ktt')" in result.output
    assert (run / "best.pt").is_file()
    assert result.stdout == expected

    # The dataset folder too (the latest run is found through best.pt.dvc).
    (run / "best.pt").unlink()
    shutil.rmtree(workspace / "datasets" / "shop")
    shutil.rmtree(workspace / ".dvc" / "cache")
    result = ktt("test", "db_linear", "shop", "--json")
    assert f"fetched {workspace / 'datasets' / 'shop'} from DVC" in result.output
    assert f"fetched {run / 'best.pt'} from DVC" in result.output
    assert [line.split()[0] for line in result.stderr.splitlines()] == ["fetched", "fetched"]  # DVC is quiet
    assert (workspace / "datasets" / "shop" / "hierarchy.json").is_file()
    assert result.stdout == expected

    # One file missing from a tracked folder: restored from the local cache, no remote needed.
    (workspace / "datasets" / "shop" / "test.parquet").unlink()
    shutil.rmtree(remote)
    result = ktt("test", "db_linear", "shop", "--json")
    assert "(local cache)" in result.output and result.stdout == expected

    # Remote gone and nothing in the local cache: a clean error naming the remote.
    (run / "best.pt").unlink()
    shutil.rmtree(workspace / ".dvc" / "cache")
    assert_clean_error(ktt("predict", "db_linear", "shop", "juice apple", expect=None),
                       "best.pt", "remote 'ktt'", str(remote))
    # An unreachable remote (its path runs through a file).
    (tmp_path / "a-file").write_text("x")
    set_remote_url(workspace, str(tmp_path / "a-file" / "remote"))
    assert_clean_error(ktt("test", "db_linear", "shop", expect=None),
                       "best.pt", "remote 'ktt'", str(tmp_path / "a-file" / "remote"))
    # No remote at all: the error says how to add one.
    set_remote_url(workspace, None)
    assert_clean_error(ktt("test", "db_linear", "shop", "--run", run, expect=None),
                       "best.pt", "no DVC remote", "ktt init --dvc --remote DIR")


def test_missing_untracked_files(ktt, workspace, tmp_path, synthetic_csv):
    ktt("init", "--dvc")
    ktt(*import_args(synthetic_csv))
    missing = workspace / "runs" / "none.pt"
    assert_clean_error(ktt("test", "db_linear", "shop", "--checkpoint", missing, expect=None),
                       f"{missing}: no such checkpoint, and it is not tracked by DVC")
    empty = workspace / "runs" / "db_linear" / "shop" / "empty"
    empty.mkdir(parents=True)
    assert_clean_error(ktt("test", "db_linear", "shop", "--run", empty, expect=None), "no best.pt")
    assert_clean_error(ktt("test", "db_linear", "shop", expect=None), "no trained run")
    assert_clean_error(ktt("test", "db_linear", "other", expect=None), "unknown dataset 'other'", "shop")


def test_dvc_flag_needs_a_dvc_repository(ktt, workspace, synthetic_csv, tiny_encoder):
    hint = "ktt init --dvc --remote DIR"
    assert_clean_error(ktt(*import_args(synthetic_csv), "--dvc", expect=None), "not in a DVC repository", hint)
    assert not (workspace / "datasets").exists()
    ktt(*import_args(synthetic_csv))
    assert_clean_error(ktt("train", "db_linear", "shop", "--epochs", "1", "--set", f"encoder={tiny_encoder}",
                           "--dvc", expect=None), "not in a DVC repository", hint)
    assert not (workspace / "runs").exists()
    assert not (workspace / ".dvc").exists() and not (workspace / ".git").exists()
    assert_clean_error(ktt("init", "--remote", workspace.parent / "r", expect=None), "--remote goes with --dvc")


def test_workspace_in_a_subfolder_of_the_repository(tmp_path, capsys):
    """The DVC root is found above the workspace; a file inside a tracked folder is fetched."""
    project, remote = tmp_path / "project", tmp_path / "remote"
    versioning.init_workspace(project, remote)
    ws = project / "nested" / "ws"
    folder = ws / "datasets" / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("alpha")
    (folder / "cache").mkdir()
    (folder / "cache" / "tokens.bin").write_text("derived")
    assert "pushed" in versioning.track(ws, [folder])
    assert "/nested/ws/datasets/*/cache/" in (project / ".dvcignore").read_text()
    assert versioning.dvc_file(folder / "sub" / "a.txt") == ws / "datasets" / "d.dvc"

    shutil.rmtree(folder)
    shutil.rmtree(project / ".dvc" / "cache")
    assert versioning.ensure_local(folder / "sub" / "a.txt", ws).read_text() == "alpha"
    assert f"fetched {folder} from DVC (remote 'ktt')" in capsys.readouterr().err
    assert not (folder / "cache").exists()  # ignored, so never stored
    # A second init reuses the repository.
    assert any("using the DVC repository in" in line for line in versioning.init_workspace(ws))


def test_init_inside_an_existing_git_repository(tmp_path):
    from scmrepo.git import Git

    Git.init(tmp_path / "outer").close()
    ws = tmp_path / "outer" / "ws"
    lines = versioning.init_workspace(ws, tmp_path / "remote")
    assert not any("git repository" in line for line in lines)  # the outer one is used
    assert (ws / ".dvc").is_dir() and not (ws / ".git").exists()
    assert versioning.find_root(ws / "datasets") == ws


def test_tfidf_and_ensemble_runs_round_trip_through_the_remote(ktt, workspace, tmp_path, synthetic_csv):
    """Models of any framework are tracked and fetched back alike (they keep best.pt only)."""
    ktt("init", "--dvc", "--remote", tmp_path / "remote")
    ktt(*import_args(synthetic_csv), "--dvc")
    out = ktt("train", "tfidf_lsgd", "shop", "--set", "min_df=1", "--dvc").output
    run = next((workspace / "runs" / "tfidf_lsgd" / "shop").iterdir())
    assert (run / "best.pt.dvc").is_file() and not (run / "last.pt").exists()
    assert "pushed to remote 'ktt'" in out
    ktt("train", "tfidf_hsgd", "shop", "--set", "min_df=1")
    ktt("train", "ensemble", "shop", "--set", "members=tfidf_lsgd,tfidf_hsgd", "--dvc")
    expected = ktt("predict", "ensemble", "shop", "household pan", "--json").output
    (run / "best.pt").unlink()
    ensemble_run = next((workspace / "runs" / "ensemble" / "shop").iterdir())
    (ensemble_run / "best.pt").unlink()
    shutil.rmtree(workspace / ".dvc" / "cache")
    result = ktt("predict", "ensemble", "shop", "household pan", "--json")
    assert f"fetched {ensemble_run / 'best.pt'} from DVC" in result.output
    assert result.stdout == expected
    assert "fetched" in ktt("test", "tfidf_lsgd", "shop").output
