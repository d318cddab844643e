"""``ktt predict --input FILE --output FILE``: streaming a file through a model in chunks."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from ktt_core.errors import KttError
from ktt_core.streaming import TextSource, write_predictions

from conftest import synthetic_rows


def _reference(ktt, texts) -> list[dict]:
    """What ``ktt predict TEXT... --json`` says for ``texts``."""
    out = ktt("predict", "db_linear", "shop", *texts, "--json", "--top-k", "3").output
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _assert_error(result, *words) -> None:
    assert result.exit_code != 0
    message = result.output.strip()
    assert message.startswith("Error: ") and "\n" not in message, message
    for word in words:
        assert word in message, message


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_predict_file_formats_and_failures(trained, ktt, tmp_path):
    texts = synthetic_rows(250, seed=1)["title"].tolist()
    reference = _reference(ktt, texts)
    assert [r["text"] for r in reference] == texts
    paths = [r["path"] for r in reference]
    frame = pd.DataFrame({"id": range(250), "title": texts})
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()

    # CSV -> CSV, more rows than one chunk: every row, in order, same paths as `ktt predict`.
    frame.to_csv(src / "items.csv", index=False)
    result = ktt("predict", "db_linear", "shop", "--input", src / "items.csv", "--output", out / "p.csv",
                 "--text", "title", "--chunk-size", 64, "--keep", "id")
    assert f"wrote 250 predictions to {out / 'p.csv'}" in result.output
    got = pd.read_csv(out / "p.csv", dtype=str, keep_default_na=False)
    assert got["id"].tolist() == [str(i) for i in range(250)]  # --keep: joins back to the input
    assert got["text"].tolist() == texts
    assert got["path"].tolist() == [" > ".join(p) for p in paths]
    assert got["level_1"].tolist() == [p[0] for p in paths]
    assert got["level_2"].tolist() == [p[1] for p in paths]
    assert got["score"].astype(float).tolist() == pytest.approx([r["score"] for r in reference], abs=1e-4)
    assert "top_k" not in got.columns

    # Parquet -> Parquet, with the top 3 paths.
    frame.rename(columns={"title": "text"}).to_parquet(src / "items.parquet", index=False, row_group_size=100)
    ktt("predict", "db_linear", "shop", "--input", src / "items.parquet", "--output", out / "p.parquet",
        "--chunk-size", 64, "--top-k", 3)
    got = pd.read_parquet(out / "p.parquet")
    assert got["text"].tolist() == texts
    assert [list(p) for p in got["path"]] == paths
    assert got["level_1_score"].tolist() == pytest.approx(
        [r["levels"][0]["score"] for r in reference], abs=1e-4)
    assert [[list(alt["path"]) for alt in row] for row in got["top_k"]] == \
        [[alt["path"] for alt in r["top_k"]] for r in reference]

    # JSONL -> JSONL (blank lines are skipped).
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)]
    (src / "items.jsonl").write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n")
    ktt("predict", "db_linear", "shop", "--input", src / "items.jsonl", "--output", out / "p.jsonl")
    got = [json.loads(line) for line in (out / "p.jsonl").read_text().splitlines()]
    assert [g["text"] for g in got] == texts
    assert [g["path"] for g in got] == paths
    assert all(set(g) == {"text", "path", "score", "level_1", "level_1_score", "level_2", "level_2_score"}
               for g in got)

    # An empty text after the first chunk: an error naming file and row; the existing output stays.
    before = (out / "p.csv").read_bytes()
    bad = frame.copy()
    bad.loc[99, "title"] = ""
    bad.to_csv(src / "bad.csv", index=False)
    result = ktt("predict", "db_linear", "shop", "--input", src / "bad.csv", "--output", out / "p.csv",
                 "--text", "title", "--chunk-size", 64, expect=None)
    _assert_error(result, "bad.csv", "row 100", "empty text")
    assert (out / "p.csv").read_bytes() == before

    # A missing column names the file and the columns it has; nothing is written.
    result = ktt("predict", "db_linear", "shop", "--input", src / "items.csv", "--output", out / "new.csv",
                 expect=None)
    _assert_error(result, "items.csv", "no column 'text'", "'id'", "'title'")
    assert _files(out) == ["p.csv", "p.jsonl", "p.parquet"]


@pytest.mark.parametrize("args, words", [
    (["--input", "{src}/missing.csv", "--output", "{out}/p.csv"], ["missing.csv", "no such file"]),
    (["--input", "{src}/items.csv"], ["--input needs --output"]),
    (["some text", "--input", "{src}/items.csv", "--output", "{out}/p.csv"], ["not both"]),
    ([], ["give TEXTS or --input"]),
    (["some text", "--output", "{out}/p.csv"], ["--output goes with --input"]),
    (["--input", "{src}/items.csv", "--output", "{out}/p.xlsx"], ["p.xlsx"]),
    (["--input", "{src}/items.json", "--output", "{out}/p.csv"], ["JSON Lines"]),
    (["--input", "{src}/items.csv", "--output", "{src}/items.csv"], ["replace the input"]),
])
def test_bad_arguments_write_nothing(ktt, tmp_path, args, words):
    # These fail before any model is loaded, so no trained workspace is needed.
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    pd.DataFrame({"text": ["a pan", "a doll"]}).to_csv(src / "items.csv", index=False)
    (src / "items.json").write_text('[{"text": "a pan"}]')
    args = [a.format(src=src, out=out) for a in args]
    result = ktt("predict", "db_linear", "shop", *args, expect=None)
    _assert_error(result, *words)
    assert _files(out) == []
    assert _files(src) == ["items.csv", "items.json"]


def _fake_predict(texts):
    """A stand-in model: the path is the text's first word, its score the text's length."""
    return [{"path": [t.split()[0]], "score": float(len(t)), "top_k": None,
             "levels": [{"level": 1, "label": t.split()[0], "score": 1.0}]} for t in texts]


def test_arrow_input_is_streamed_in_chunks(tmp_path):
    texts = [f"word{i} filler" for i in range(23)]
    feather.write_feather(pa.table({"text": texts}), tmp_path / "items.arrow", chunksize=10)
    seen = []

    def predict(chunk):
        seen.append(len(chunk))
        return _fake_predict(chunk)

    n = write_predictions(TextSource(tmp_path / "items.arrow", "text", 4), tmp_path / "p.jsonl", predict,
                          depth=2, progress=False)
    assert n == 23 and max(seen) <= 4 and sum(seen) == 23
    got = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [g["text"] for g in got] == texts
    # A short path leaves the deeper level empty.
    assert got[0]["level_1"] == "word0" and got[0]["level_2"] is None


def test_missing_text_in_parquet_names_the_row(tmp_path):
    pd.DataFrame({"text": ["a", "b", None, "d"]}).to_parquet(tmp_path / "items.parquet", index=False)
    source = TextSource(tmp_path / "items.parquet", "text", 2)
    assert source.total == 4
    with pytest.raises(KttError, match=r"items.parquet: row 3: empty text"):
        write_predictions(source, tmp_path / "p.parquet", _fake_predict, depth=1, progress=False)
    assert _files(tmp_path) == ["items.parquet"]


@pytest.mark.parametrize("source_name, output_name", [
    ("items.csv", "p.parquet"), ("items.parquet", "p.csv"), ("items.jsonl", "p.parquet"),
    ("items.arrow", "p.jsonl"), ("items.jsonl", "p.jsonl")])
def test_keep_copies_input_columns_beside_each_prediction(tmp_path, source_name, output_name):
    texts = [f"word{i} filler" for i in range(11)]
    frame = pd.DataFrame({"id": [100 + i for i in range(11)], "text": texts, "shop": ["north", None] * 5 + ["x"]})
    path = tmp_path / source_name
    {"items.csv": lambda: frame.to_csv(path, index=False),
     "items.parquet": lambda: frame.to_parquet(path, index=False),
     "items.jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "items.arrow": lambda: feather.write_feather(pa.Table.from_pandas(frame, preserve_index=False), path,
                                                  chunksize=4)}[source_name]()
    n = write_predictions(TextSource(path, "text", 3, keep=["id", "shop", "text"]), tmp_path / output_name,
                          _fake_predict, depth=1, progress=False)
    assert n == 11
    out = tmp_path / output_name
    got = (pd.read_parquet(out) if output_name.endswith(".parquet") else pd.read_json(out, lines=True)
           if output_name.endswith(".jsonl") else pd.read_csv(out))
    assert list(got.columns[:3]) == ["id", "shop", "text"]  # kept columns first, the text once
    assert [int(x) for x in got["id"]] == [100 + i for i in range(11)]
    assert got["text"].tolist() == texts and got["level_1"].tolist() == [t.split()[0] for t in texts]
    assert got["shop"].iloc[0] == "north" and pd.isna(got["shop"].iloc[1])


def test_keep_refuses_unknown_or_clashing_columns(tmp_path, ktt):
    pd.DataFrame({"id": [1], "text": ["a b"], "score": [3]}).to_csv(tmp_path / "items.csv", index=False)
    with pytest.raises(KttError, match=r"items.csv: --keep idx: no such column; columns: id, text, score"):
        TextSource(tmp_path / "items.csv", "text", keep=["idx"])
    with pytest.raises(KttError, match=r"--keep score: the output has a column of that name"):
        TextSource(tmp_path / "items.csv", "text", keep=["score"])
    _assert_error(ktt("predict", "db_linear", "shop", "a text", "--keep", "id", expect=None), "--keep goes with --input")
