"""Import speed: ``ktt import``'s reader on N synthetic rows against a bare ``pandas.read_csv``
of the same file, in one run.

    python benchmarks/import_speed.py [--rows 100000]
"""
import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from ktt_core.data.importers import extract_records, read_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    n = parser.parse_args().rows
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        pd.DataFrame({"title": [f"product {i}" for i in range(n)],
                      "category": [f"A{i % 7} > B{i % 70} > C{i % 700}" for i in range(n)]}).to_csv(path, index=False)
        started = time.perf_counter()
        pd.read_csv(path)
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        extract_records(read_table(path), text_column="title", label_columns=["category"], sep=" > ",
                        source=str(path))  # what ktt import runs before writing the splits
        ours = time.perf_counter() - started
    print(f"{n:,} rows: pandas.read_csv {baseline:.2f} s, ktt import reader {ours:.2f} s "
          f"({n / ours:,.0f} rows/s, {ours / baseline:.1f}x the bare read)")


if __name__ == "__main__":
    main()
