"""The table of bad inputs and the message each one gets (markdown, for the book's reliability note).

Runs the catalogue of ``tests/test_bad_inputs.py`` (each bad input built in a fresh temporary
folder, through the entry point a user hits) and prints one row per input: what is wrong, the
entry point, the error type and its message, with the temporary folder shown as ``<tmp>``.

Usage: ``python benchmarks/bad_inputs_table.py [--out table.md]``
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_bad_inputs import CATALOGUE, run_bad  # noqa: E402


def rows() -> list[dict[str, str]]:
    """One row per catalogue entry: id, input, entry point, error type, message."""
    out = []
    for bad in CATALOGUE:
        with tempfile.TemporaryDirectory(prefix="bad_") as folder:
            error, _ = run_bad(bad, Path(folder))
            message = str(error).replace(str(Path(folder).resolve()), "<tmp>").replace(folder, "<tmp>")
        out.append(
            {"id": bad.id, "input": bad.what, "entry": bad.entry, "error": type(error).__name__, "message": message}
        )
    return out


def markdown(table: list[dict[str, str]]) -> str:
    """The rows as a markdown table (pipes in messages escaped)."""
    lines = ["| bad input | entry point | error | message |", "|---|---|---|---|"]
    for row in table:
        message = row["message"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['input']} | {row['entry']} | {row['error']} | {message} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    text = markdown(rows())
    sys.stdout.write(text)
    if args.out:
        from nnsam2_utils.data.io import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(text)


if __name__ == "__main__":
    main()
