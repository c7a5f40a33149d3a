"""End to end: Snakemake runs every notebook with papermill on the tiny cohort and builds the book."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end to end: the whole tiny book (minutes)


def tiny_as_demo(folder: Path) -> Path:
    """A profile folder holding the tiny profile under the name ``demo`` (see NNSAM2_CONFIG_DIR)."""
    profile = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text(encoding="utf-8"))
    profile["profile"] = "demo"
    folder.mkdir()
    (folder / "demo.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def unlabelled_user_dataset(folder: Path) -> Path:
    """A third dataset as a user without expert labels brings it: tiny athletes' MRI, one annotated slice, no labels.

    The manifest lists no label files (they are deleted), and names an annotation volume holding the
    expert label of one slice (the L4/L5 disc) of the first scan, as drawn in ITK-SNAP.
    """
    import SimpleITK as sitk

    from nnsam2_utils.data.synthetic.cohort import generate_cohort

    source = generate_cohort(folder, size="tiny", seed=0, datasets=["athletes_mri"])[0]
    manifest = yaml.safe_load(source.read_text(encoding="utf-8"))
    root = source.parent / manifest["root"]
    first = manifest["cases"][0]
    label = sitk.ReadImage(str(root / first["label"]))
    array = sitk.GetArrayFromImage(label)
    one = array * 0
    one[first["discs"]["L4L5"]] = array[first["discs"]["L4L5"]]
    annotation = sitk.GetImageFromArray(one)
    annotation.CopyInformation(label)
    (root / "annotation").mkdir()
    sitk.WriteImage(annotation, str(root / "annotation" / f"{first['id']}_one_slice.nii.gz"))
    shutil.rmtree(root / "labels")
    for case in manifest["cases"]:
        case.pop("label")
        case["sha256"].pop("label")
    manifest.update(
        name="clinic_no_labels", annotation={"case": first["id"], "file": f"annotation/{first['id']}_one_slice.nii.gz"}
    )
    path = source.with_name("clinic_no_labels.yaml")
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    source.unlink()
    return path


def random_sam2_checkpoint(path: Path, config: str, image_size: int) -> str:
    """A SAM2.1 checkpoint file in the official format ({"model": state_dict}) with random weights; its SHA-256.

    No real checkpoint can be had offline: this one exercises the configured-checkpoint path of a
    compared backend (SHA-256 check, SAM2's own loader) with meaningless masks.
    """
    import torch

    from nnsam2_utils.data.io import sha256
    from nnsam2_utils.propagate.sam2 import build_predictor

    torch.manual_seed(0)
    predictor = build_predictor(config, None, torch.device("cpu"), image_size)
    torch.save({"model": predictor.state_dict()}, path)
    return sha256(path)


def dag_parents(command: list[str], env: dict, rule: str) -> set[str]:
    """The jobs a rule's job waits for in the workflow's graph (``snakemake --dag``), as "rule wildcard: value"."""
    dag = subprocess.run(
        [*command[:-2], "--dag", "--forceall", *command[-2:]], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert dag.returncode == 0, dag.stderr[-2000:]
    labels = {m[0]: m[1].replace("\\n", " ") for m in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', dag.stdout, re.M)}
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dag.stdout, re.M)
    target = next(node for node, label in labels.items() if label == rule)
    return {labels[a] for a, b in edges if b == target}


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """The tiny cohort run end to end under the profile name "demo" (the notebooks' default), book built.

    NNSAM2_CONFIG_DIR points at a folder whose demo.yaml is config/tiny.yaml renamed, NNSAM2_WORK
    at a temporary work folder: the notebooks' defaults then point at this run.
    """
    tmp = tmp_path_factory.mktemp("workflow")
    book = tmp / "book"
    shutil.copytree(ROOT / "book", book, ignore=shutil.ignore_patterns("_build", "generated"))
    shutil.copytree(ROOT / "docs", tmp / "docs")  # the Method page includes ../docs/method.md
    config = tiny_as_demo(tmp / "config")
    profile = yaml.safe_load((config / "demo.yaml").read_text(encoding="utf-8"))
    profile["manifests"] = [str(unlabelled_user_dataset(tmp / "user_data"))]
    sam2 = {
        "sam2_config": "configs/sam2.1/sam2.1_hiera_t.yaml",
        "sam2_image_size": 128,
        "sam2_checkpoint": str(tmp / "sam2_random.pt"),
    }
    sam2["sam2_sha256"] = random_sam2_checkpoint(tmp / "sam2_random.pt", sam2["sam2_config"], sam2["sam2_image_size"])
    profile["propagation"].update(compare_backends=["sam2"], **sam2)  # stage 0 alone with SAM2: a results-table row
    (config / "demo.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    env = dict(os.environ, NNSAM2_WORK=str(tmp / "work"), NNSAM2_CONFIG_DIR=str(config))
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        "--cores",
        "2",
        "--config",
        "profile=demo",
        f"book={book}",
        "--",
        "book",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp, book, command, env


def test_book_holds_the_dsc_table_of_this_run(built_book):
    tmp, book, _, _ = built_book
    index = book / "_build" / "html" / "intro.html"
    assert index.exists()
    dsc = pd.read_csv(tmp / "work" / "demo" / "tables" / "dsc.csv")
    assert list(dsc.columns) == ["dataset", "case", "class", "stage", "dsc"]
    assert set(dsc.stage) == {
        "stage0",
        "nnunet1",
        "nnunet2",
        "nnunet3",
        "repeat",
        "stage0_sam2",
        "supervised",
        "registration",
        "threshold",
    }
    assert set(dsc.dataset) == {"backpain_t2w", "totalseg_ct"}  # clinic_no_labels has no expert labels: no DSC
    results = (book / "_build" / "html" / "generated" / "04_results.html").read_text(encoding="utf-8")
    mean_stage0 = dsc[dsc.stage == "stage0"].groupby(["dataset", "case"]).dsc.mean().groupby("dataset").mean()
    for value in mean_stage0:
        assert f"{value:.3f}" in results
    html = index.read_text(encoding="utf-8")
    assert "Stage 0" in html and "mean DSC" in html
    assert "Stage 0 (SAM2)" in results  # the compared backend's column
    assert (book / "_build" / "html" / "generated" / "02_stage0_backpain_t2w__sam2.html").exists()
    sam2 = json.loads((tmp / "work" / "demo" / "runlog" / "stage0_sam2__backpain_t2w.json").read_text(encoding="utf-8"))
    assert sam2["parameters"]["backend"] == "sam2" and sam2["parameters"]["sam2_checkpoint"].endswith("sam2_random.pt")


def test_timings_table_and_pseudo_labels_on_disk(built_book):
    tmp, _, _, _ = built_book
    timings = pd.read_csv(tmp / "work" / "demo" / "tables" / "timings.csv")
    assert list(timings.columns) == ["step", "dataset", "seconds", "peak_mb"]
    assert {
        "cohort",
        "prepare",
        "stage0",
        "nnunet1_train",
        "nnunet1_predict",
        "nnunet3_train",
        "supervised_train",
        "oneshot_baselines",
        "measure",
        "repeat_train",
    } <= set(timings.step)
    assert (timings.seconds > 0).all()
    labels = list((tmp / "work" / "demo" / "stage0").rglob("labels/*.nii.gz"))
    assert len(labels) == 9 and len(list((tmp / "work" / "demo" / "stage0_sam2").rglob("labels/*.nii.gz"))) == 9
    from nnsam2_utils.refine.filters import STAGE_RULES, scan_filter

    for stage in (2, 3):  # the scans each stage kept are the ones its rule keeps from the run's own agreement table
        selection = pd.read_csv(tmp / "work" / "demo" / f"nnunet{stage}" / "selection.csv")
        rule = STAGE_RULES[stage]  # the tiny profile keeps the method's stage-2/3 rules
        again = scan_filter(
            selection[["dataset", "case", "agreement", "smooth"]],
            rule["min_agreement"],
            rule["fraction"],
            rule["min_scans"],
        )
        key = ["dataset", "case"]
        assert (
            again.set_index(key)[["kept", "reason"]]
            .sort_index()
            .equals(selection.set_index(key)[["kept", "reason"]].sort_index())
        )
        assert selection.groupby("dataset").kept.sum().tolist() == [2, 2, 2]  # three scans each: the minimum of 2
    agreement = pd.read_csv(tmp / "work" / "demo" / "tables" / "agreement.csv")
    assert {"volume_ml", "hu_mean"} <= set(agreement.measure)


def test_a_dataset_without_expert_labels_goes_through_every_stage_and_is_measured(built_book):
    tmp, book, _, _ = built_book
    work = tmp / "work" / "demo"
    cases = pd.read_csv(work / "prepared" / "clinic_no_labels" / "cases.csv")
    assert len(cases) == 3 and not cases.has_label.astype(bool).any()
    annotation = json.loads((work / "stage0" / "clinic_no_labels" / "annotation.json").read_text(encoding="utf-8"))
    assert annotation["annotation_volume"] == "annotation"  # the user's slice, not an expert label
    for stage in ("nnunet1", "nnunet2", "nnunet3", "repeat"):
        assert sorted(p.name for p in (work / stage / "clinic_no_labels" / "labels").glob("*.nii.gz")) == sorted(
            f"{c}.nii.gz" for c in cases.case
        ), stage
    # the supervised bound, cross-validated: every expert-labelled scan (2 datasets x 3) in one fold, each fold's
    # model trained on the other fold's scans only, and the unlabelled scans predicted too
    folds = pd.read_csv(work / "supervised" / "folds.csv")
    assert len(folds) == 6 and set(folds.dataset) == {"backpain_t2w", "totalseg_ct"} and set(folds.fold) == {0, 1}
    assert (folds.groupby("subject").fold.nunique() == 1).all()
    for fold, scored in folds.groupby("fold"):
        record = json.loads((work / "runlog" / f"supervised_train__fold{fold}.json").read_text(encoding="utf-8"))
        assert record["parameters"]["cases"] == 6 - len(scored)
    assert sorted(p.name for p in (work / "supervised" / "clinic_no_labels" / "labels").glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for c in cases.case
    )
    measurements = pd.read_csv(work / "tables" / "measurements.csv")
    own = measurements[measurements.dataset == "clinic_no_labels"]
    assert set(own.source) == {"auto"} and len(own.case.unique()) == 3
    assert (own[own.measure == "volume_ml"].query("`class` in ['1', '2']").value > 0).all()
    summary = pd.read_csv(book / "generated" / "tables" / "unlabelled_measurements.csv")
    assert set(summary.dataset) == {"clinic_no_labels"} and (summary.scans == 3).all()
    volumes = own[own.measure == "volume_ml"].query("`class` in ['1', '2']").groupby("class").value.mean()
    shown = summary[summary.measure == "volume_ml"].set_index(summary["class"].astype(str))["mean"]
    assert shown.round(3).to_dict() == volumes.round(3).to_dict()
    html = book / "_build" / "html" / "generated"
    assert "No expert labels, so no DSC, for: clinic_no_labels" in (html / "04_results.html").read_text(
        encoding="utf-8"
    )
    assert "clinic_no_labels" in (html / "06_agreement.html").read_text(encoding="utf-8")


def test_run_to_run_variation_of_training_is_measured_and_shown_beside_the_margins(built_book):
    import SimpleITK as sitk

    tmp, book, command, env = built_book
    work = tmp / "work" / "demo"
    variation = pd.read_csv(work / "tables" / "repeatability.csv")
    assert {"volume_ml", "hu_mean"} <= set(variation.measure) and set(variation.group) == {"MRI", "CT"}
    assert (variation.max_abs_pct >= variation.mean_abs_pct).all()
    # the MRI volume row, recomputed from the two trainings' label files
    diffs, firsts = [], []
    for dataset in ("backpain_t2w", "clinic_no_labels"):
        for case in pd.read_csv(work / "prepared" / dataset / "cases.csv").case:
            first, second = (
                sitk.ReadImage(str(work / s / dataset / "labels" / f"{case}.nii.gz")) for s in ("nnunet3", "repeat")
            )
            ml = lambda im, c: (sitk.GetArrayFromImage(im) == c).sum() * float(np.prod(im.GetSpacing())) / 1000  # noqa: E731
            for c in (1, 2):
                firsts.append(ml(first, c))
                diffs.append(ml(second, c) - ml(first, c))
    row = variation[(variation.measure == "volume_ml") & (variation.group == "MRI")].iloc[0]
    assert row.n == len(diffs) == 12
    assert row.mean_abs_pct == pytest.approx(100 * np.mean(np.abs(diffs)) / np.mean(firsts), rel=1e-4)
    beside = pd.read_csv(work / "tables" / "variation_vs_margin.csv")
    assert (beside.margin_pct.round(6) == 10).all() and beside.seed_change_mean_pct.notna().any()
    repeat = glued(nbformat.read(str(book / "generated" / "05_repeat.ipynb"), as_version=4))
    assert repeat["stage0_identical"] == "identical"  # stage 0 again on one scan: the same bytes
    # stage 0's model was built once, by its own step, before any dataset's stage 0 started
    records = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (work / "runlog").glob("*.json")}
    assert (
        min(r["started"] for k, r in records.items() if k.startswith("stage0__")) >= records["encoder__all"]["started"]
    )
    # the second training needs only nnU-Net 2's labels, so it can train beside nnU-Net 3: in the workflow's graph it
    # depends on stage 2's job and not on stage 3's (when it starts then depends on which core is free)
    assert dag_parents(command, env, "repeat_train") >= {"refine stage: 2"}
    assert "refine stage: 3" not in dag_parents(command, env, "repeat_train")


def test_the_final_model_meets_new_subjects_through_predict_and_the_results_page_says_how_it_scores(built_book):
    """Step new_subjects (method §13.1): the generated datasets drawn again (other subjects, never the user's own
    dataset), two scans each segmented by ``predict`` with the final model (its SHA-256 in their provenance), scored
    as the run scores its own; the results page shows the gap table and its sentence with the run's numbers."""
    from nnsam2_utils.data.io import sha256
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.evaluate.new_subjects import scan_rows

    tmp, book, _, _ = built_book
    work = tmp / "work" / "demo"
    folder = work / "new_subjects"
    table = pd.read_csv(folder / "dsc.csv")
    assert set(table.dataset) == {"backpain_t2w", "totalseg_ct"}  # not clinic_no_labels: no second draw of it
    assert table.groupby("dataset").case.nunique().tolist() == [2, 2]
    for dataset, rows in table.groupby("dataset"):
        manifest = load_manifest(folder / "data" / f"{dataset}.yaml")
        run_images = {sha256(p) for p in (work / "data" / dataset / "images").iterdir()}
        for case, scan in rows.groupby("case"):
            out = folder / "predicted" / dataset / case
            assert sha256(out.parent.parent.parent / "data" / dataset / "images" / f"{case}.nii.gz") not in run_images
            entry = next(c for c in manifest.cases if c.id == case)
            again = pd.DataFrame(scan_rows(manifest, entry, out / f"{case}_lpm.nii.gz"))
            assert np.allclose(again.dsc, scan.dsc, equal_nan=True) and np.allclose(again.truth_ml, scan.truth_ml)
            record = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
            assert record["stage"] == "nnunet3" and record["model"]["sha256"] == sha256(record["model"]["checkpoint"])
    html = (book / "_build" / "html" / "generated" / "04_results.html").read_text(encoding="utf-8")
    assert "On subjects the run never saw" in html
    new_mean = table.groupby(["dataset", "case"]).dsc.mean().groupby("dataset").mean().mean()
    assert f"scores a mean DSC of {new_mean:.3f}" in html


def test_a_second_run_with_nothing_changed_does_nothing(built_book):
    _, _, command, env = built_book
    result = subprocess.run(
        command[:1] + ["--dry-run"] + command[1:], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_the_built_book_has_no_broken_link_image_or_page_error(built_book):
    import bookcheck

    tmp, book, _, _ = built_book
    html = book / "_build" / "html"
    link_errors = bookcheck.errors(bookcheck.check_links(html))
    assert not link_errors, [str(p) for p in link_errors]
    content_errors = bookcheck.errors(bookcheck.check_content(html))  # warnings, logs, paths, duplicates
    assert not content_errors, [str(p) for p in content_errors]
    if bookcheck.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the link check above still ran")
    shots = tmp / "work" / "demo" / "screenshots"
    report = bookcheck.browse(
        html,
        shots,
        screenshots={"intro.html": "landing.png", "generated/04_results.html": "results.png"},
        allow=bookcheck.KNOWN_SPHINX_ISSUES,
    )
    assert report.ok, [str(p) for p in report.errors]
    assert (shots / "landing.png").stat().st_size > 10_000 and (shots / "results.png").stat().st_size > 10_000


RESULTS_PAGES = ["00_cohort", "04_results", "05_oneshot", "05_repeat", "05_supervised", "06_agreement", "07_teaching"]


def downloads(html: str) -> dict[str, str]:
    """CSV download links of a built page: file name → href (other downloads, e.g. a slice viewer, left out)."""
    return {
        href.rsplit("/", 1)[-1]: href
        for href in re.findall(r'class="reference download internal"[^>]*href="([^"]+)"', html)
        if href.endswith(".csv")
    }


def test_every_table_links_to_its_csv_and_every_results_page_states_its_provenance(built_book):
    tmp, book, _, env = built_book
    html_root = book / "_build" / "html"
    work = tmp / "work" / "demo"
    profile_sha = hashlib.sha256((Path(env["NNSAM2_CONFIG_DIR"]) / "demo.yaml").read_bytes()).hexdigest()
    for page in RESULTS_PAGES + ["08_run_record"]:
        html = (html_root / "generated" / f"{page}.html").read_text(encoding="utf-8")
        links = downloads(html)
        assert html.count('class="dataframe') <= html.count("Download as CSV"), page  # every table has its link
        for name, href in links.items():  # each link is the CSV the run wrote
            served = (html_root / "generated" / href).resolve()
            assert served.is_file(), (page, href)
            assert served.read_bytes() == (book / "generated" / "tables" / name).read_bytes()
        if page != "08_run_record":
            assert "Provenance of this page" in html and profile_sha[:12] in html, page
    results = (html_root / "generated" / "04_results.html").read_text(encoding="utf-8")
    served = (html_root / "generated" / downloads(results)["dsc.csv"]).resolve()
    assert served.read_bytes() == (work / "tables" / "dsc.csv").read_bytes()
    checkpoint = next((work / "nnunet1" / "nnunet" / "results").rglob("checkpoint_final.pth"))
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12] in results
    record = json.loads((work / "runlog" / "nnunet1_train__pooled.json").read_text(encoding="utf-8"))
    assert record["started"].replace("T", " ")[:19] in results


def test_the_landing_page_shows_the_method_figure_and_an_abstract_glued_from_the_run(built_book):
    tmp, book, _, _ = built_book
    html = (book / "_build" / "html" / "intro.html").read_text(encoding="utf-8")
    assert (
        'src="_images/method.png"' in html
        and (book / "_build" / "html" / "_images" / "method.png").stat().st_size > 20_000
    )
    pasted = re.findall(r'<span class="pasted-text">(.*?)</span>', html)
    dsc = pd.read_csv(tmp / "work" / "demo" / "tables" / "dsc.csv")
    per_stage = dsc.groupby(["stage", "dataset", "case"]).dsc.mean().groupby("stage").mean()
    agreement = pd.read_csv(tmp / "work" / "demo" / "tables" / "agreement.csv").dropna(subset=["tost_p"])
    # the data the run used: the tiny demo cohort and the unlabelled dataset brought as the user's own
    assert pasted[0] == "the synthetic demo cohort and 1 dataset of your own (clinic_no_labels)"
    pasted = pasted[1:]
    assert pasted[:2] == ["3", "9"] and int(pasted[2]) > 9  # datasets, scans, region slices
    assert pasted[3] == "LiteMedSAM"
    assert pasted[4] == f"{per_stage['stage0']:.3f}" and pasted[5] == "3"
    assert pasted[6] == "nnU-Net 3 (nnsam2)" and pasted[7] == f"{per_stage['nnunet3']:.3f}"
    assert pasted[8] == f"{per_stage['supervised']:.3f}"
    assert pasted[9] == "cross-validated over subjects: each scan scored by a model that did not see it"
    pasted = pasted[1:]
    assert pasted[9] == "10" and pasted[10:12] == [str(int((agreement.tost_p < 0.05).sum())), str(len(agreement))]
    variation = pd.read_csv(tmp / "work" / "demo" / "tables" / "variation_vs_margin.csv")
    assert pasted[12] == f"{variation.seed_change_mean_pct.max():.1f}"  # run-to-run variation, worst group
    assert float(pasted[13]) > 0 and len(pasted) == 15
    # what the data are, in "What this run shows": phantoms and the user's dataset, each said
    assert pasted[14] == (
        "The data mix the synthetic demo cohort with 1 dataset of your own (clinic_no_labels): phantoms with exact "
        "ground truth, made hard in the ways real scans are but not real scans (the results page sets their numbers "
        "beside a real two-scan test), so read the rows of your own datasets on their own"
    )
    # the findings the run wrote are on the landing page, and they are this run's (the stage-0 mean is in them)
    findings = (book / "generated" / "results_findings.md").read_text(encoding="utf-8")
    assert f"from {per_stage['stage0']:.3f} (stage 0)" in findings
    assert "What this run shows" in html and f"from {per_stage['stage0']:.3f} (stage 0)" in html


def test_every_notebook_runs_top_to_bottom_with_its_defaults(built_book, monkeypatch):
    """What a reader of `make lab` does: open a notebook and run all cells, no parameters injected."""
    import ast
    import datetime as dt

    from nbclient import NotebookClient

    tmp, book, _, env = built_book
    for name in ("NNSAM2_WORK", "NNSAM2_CONFIG_DIR"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("NNSAM2_BOOK", str(book))
    before = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    papermill_glue = glued(nbformat.read(str(book / "generated" / "04_results.ipynb"), as_version=4))
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        nb = nbformat.read(str(path), as_version=4)
        parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        defaults = {
            t.id: ast.literal_eval(node.value) for node in ast.parse(parameters.source).body for t in node.targets
        }  # literal data only, or this raises
        assert defaults["profile"] == "demo", path
        NotebookClient(
            nb, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, (path.name, errors)
        if path.stem == "04_results":
            again = glued(nb)
            assert again["stage0_mean_dsc"] == papermill_glue["stage0_mean_dsc"]
            assert again["final_stage"] == papermill_glue["final_stage"]
    records = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp / "work" / "demo" / "runlog").glob("*.json")]
    rerun = {r["step"] for r in records if r["started"] >= before}
    assert {"cohort", "prepare", "stage0", "measure"} <= rerun
    # the one-shot page reads back what the per-dataset jobs finished under the same run key: not run, not re-timed;
    # so do the refine and supervised pages with their trained models and predictions (the records keep the training)
    assert not {"oneshot_baselines", "nnunet1_train", "nnunet1_predict", "supervised_train"} & rerun


def glued(nb) -> dict[str, str]:
    """Text values a notebook glued (myst-nb), by key."""
    out = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook", {})
            text = output.get("data", {}).get(f"{scrap.get('mime_prefix', '')}text/plain")
            if scrap.get("name") and text is not None:
                out[scrap["name"]] = text.strip("'\"")
    return out
