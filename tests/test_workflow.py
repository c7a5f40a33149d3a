"""End to end: Snakemake runs every notebook with papermill on the tiny cohort and builds the book."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workflow")
    book = tmp / "book"
    shutil.copytree(ROOT / "book", book, ignore=shutil.ignore_patterns("_build", "generated"))
    env = dict(os.environ, NNSAM2_WORK=str(tmp / "work"))
    command = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--config", "profile=tiny", f"book={book}",
               "--", "book"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp, book, command, env


def test_book_holds_the_dsc_table_of_this_run(built_book):
    tmp, book, _, _ = built_book
    index = book / "_build" / "html" / "intro.html"
    assert index.exists()
    dsc = pd.read_csv(tmp / "work" / "tiny" / "tables" / "dsc.csv")
    assert list(dsc.columns) == ["dataset", "case", "class", "stage", "dsc"]
    assert set(dsc.stage) == {"stage0", "nnunet1", "nnunet2", "nnunet3", "supervised", "registration", "threshold"}
    assert set(dsc.dataset) == {"backpain_t2w", "totalseg_ct"}
    results = (book / "_build" / "html" / "generated" / "04_results.html").read_text()
    mean_stage0 = dsc[dsc.stage == "stage0"].groupby(["dataset", "case"]).dsc.mean().groupby("dataset").mean()
    for value in mean_stage0:
        assert f"{value:.3f}" in results
    html = index.read_text()
    assert "Stage 0" in html and "mean DSC" in html


def test_timings_table_and_pseudo_labels_on_disk(built_book):
    tmp, _, _, _ = built_book
    timings = pd.read_csv(tmp / "work" / "tiny" / "tables" / "timings.csv")
    assert list(timings.columns) == ["step", "dataset", "seconds", "peak_mb"]
    assert {"cohort", "prepare", "stage0", "nnunet1_train", "nnunet1_predict", "nnunet3_train",
            "supervised_train", "oneshot_baselines", "measure"} <= set(timings.step)
    assert (timings.seconds > 0).all()
    labels = list((tmp / "work" / "tiny" / "stage0").rglob("labels/*.nii.gz"))
    assert len(labels) == 6
    selection = pd.read_csv(tmp / "work" / "tiny" / "nnunet2" / "selection.csv")
    assert selection.groupby("dataset").kept.sum().tolist() == [2, 2]   # at least 2 scans per dataset
    agreement = pd.read_csv(tmp / "work" / "tiny" / "tables" / "agreement.csv")
    assert {"volume_ml", "hu_mean"} <= set(agreement.measure)


def test_a_second_run_with_nothing_changed_does_nothing(built_book):
    _, _, command, env = built_book
    result = subprocess.run(command[:1] + ["--dry-run"] + command[1:], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_the_built_book_has_no_broken_link_image_or_page_error(built_book):
    from nnsam2_utils import bookcheck

    tmp, book, _, _ = built_book
    html = book / "_build" / "html"
    link_errors = bookcheck.errors(bookcheck.check_links(html))
    assert not link_errors, [str(p) for p in link_errors]
    if bookcheck.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the link check above still ran")
    shots = tmp / "work" / "tiny" / "screenshots"
    report = bookcheck.browse(html, shots, screenshots={"intro.html": "landing.png",
                                                        "generated/04_results.html": "results.png"},
                              allow=bookcheck.KNOWN_SPHINX_ISSUES)
    assert report.ok, [str(p) for p in report.errors]
    assert (shots / "landing.png").stat().st_size > 10_000 and (shots / "results.png").stat().st_size > 10_000
