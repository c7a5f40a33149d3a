"""Page provenance, downloadable tables, the method figure and the profile folder (NNSAM2_CONFIG_DIR)."""

import hashlib
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import yaml

matplotlib.use("Agg")

from nnsam2_utils.errors import ConfigError
from nnsam2_utils.refine.stages import DATASET_IDS  # noqa: E402
from nnsam2_utils.report import method_figure, provenance  # noqa: E402
from nnsam2_utils.workflow import profile as config  # noqa: E402
from nnsam2_utils.workflow import runlog, session

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_run(tmp_path, monkeypatch, tiny_cohort):
    """The tiny profile under the name "demo" in a temporary profile folder and work folder, cohort in place."""
    profile = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text(encoding="utf-8")) | {"profile": "demo"}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "demo.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("NNSAM2_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("NNSAM2_BOOK", str(tmp_path / "book"))
    run = session.start("demo")
    shutil.copytree(tiny_cohort, run.workspace.data)
    return run


def test_profiles_are_read_from_nnsam2_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"demo\.yaml: run profile not found \(NNSAM2_CONFIG_DIR is set\)"):
        config.load_profile("demo")
    (tmp_path / "demo.yaml").write_text("profile: demo\nseed: 7\n")
    assert config.load_profile("demo").seed == 7
    monkeypatch.delenv("NNSAM2_CONFIG_DIR")
    assert config.config_dir() == ROOT / "config"
    assert config.load_profile("tiny").profile == "tiny"


def test_page_provenance_reads_profile_manifests_checkpoints_and_step_records(tiny_run):
    ws = tiny_run.workspace
    with runlog.step_record(ws.runlog, "stage0", "backpain_t2w", {"backend": "litemedsam"}) as record:
        record.update(backend="litemedsam")
    with runlog.step_record(ws.runlog, "nnunet1_train", "pooled"):
        pass
    with runlog.step_record(ws.runlog, "measure", "pooled"):
        pass
    model = (
        ws.stage("nnunet1")
        / "nnunet"
        / "results"
        / f"Dataset{DATASET_IDS['nnunet1']}"
        / "fold_all"
        / "checkpoint_final.pth"
    )
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights of nnU-Net 1")

    text = provenance.page_provenance(tiny_run, ["stage0", "nnunet"])
    profile_sha = hashlib.sha256((Path(config.config_dir()) / "demo.yaml").read_bytes()).hexdigest()
    assert f"`demo` (`demo.yaml`, SHA-256 `{profile_sha[:12]}`), seed 0" in text
    manifest_sha = hashlib.sha256(tiny_run.manifest_path("totalseg_ct").read_bytes()).hexdigest()
    assert f"| totalseg_ct | CT | 3 | {manifest_sha[:12]} |" in text
    assert hashlib.sha256(b"weights of nnU-Net 1").hexdigest()[:12] in text
    name, path = provenance.promptable_checkpoint(tiny_run.section("propagation"))
    assert name == "LiteMedSAM" and hashlib.sha256(path.read_bytes()).hexdigest()[:12] in text
    assert "| stage0 | backpain_t2w |" in text and "| nnunet1_train | pooled |" in text
    assert "measure" not in text  # not a step of this page
    assert "torch " in text and "nnunetv2 " in text


def test_show_table_writes_the_csv_and_serves_it_and_its_sources_in_the_book(tiny_run, capsys):
    ws = tiny_run.workspace
    long = pd.DataFrame({"dataset": ["a", "a", "b"], "case": ["1", "2", "3"], "dsc": [0.5, 0.7, 0.9]})
    source = ws.stage("stage0", "a") / "dsc.csv"
    source.parent.mkdir(parents=True)
    long.to_csv(source, index=False)
    summary = long.groupby("dataset").dsc.mean()
    csv = provenance.show_table(ws, summary, "dsc_summary.csv", sources=[source])
    assert pd.read_csv(csv).to_dict("list") == {"dataset": ["a", "b"], "dsc": [0.6, 0.9]}
    book = Path(tiny_run.workspace.root).parents[1] / "book" / "generated" / "tables"
    assert (book / "dsc_summary.csv").read_bytes() == csv.read_bytes()
    assert (book / "stage0_a_dsc.csv").read_bytes() == source.read_bytes()
    shown = capsys.readouterr().out
    assert (
        "[dsc_summary.csv](tables/dsc_summary.csv) (this table)"
        in provenance.download_links(["dsc_summary.csv", "stage0_a_dsc.csv"], what=["this table", "the data"])
        and "0.6" in shown
    )
    with pytest.raises(ValueError, match="must end with .csv"):
        provenance.show_table(ws, summary, "dsc_summary")
    # a table named like the data it summarises would overwrite it in the book: two links, one file
    with pytest.raises(ValueError, match=r"share the book file\(s\) \['stage0_a_dsc.csv'\]"):
        provenance.show_table(ws, summary, "stage0_a_dsc.csv", sources=[source])
    with pytest.raises(ValueError, match="share the book file"):
        provenance.show_table(ws, summary, "dsc_summary.csv", sources=[source, source])
    with pytest.raises(FileNotFoundError, match="nothing to publish"):
        provenance.publish(ws.root / "missing.csv")


def test_method_figure_is_drawn_around_a_real_slice_with_the_runs_stages(tiny_run):
    manifest = tiny_run.manifest("backpain_t2w")
    image, label = method_figure.annotated_level_slice(manifest)
    assert image.ndim == 2 and set(np.unique(label)) == {0, 1, 2}
    # the slice at the L3/L4 disc (the superior end of the region), not the L5/S1 one
    import SimpleITK as sitk

    from nnsam2_utils.data.geometry import canonical, lps_slice_index
    from nnsam2_utils.data.io import read_image

    case = manifest.cases[0]
    scan = read_image(manifest.resolve(case.image))
    volume = sitk.GetArrayFromImage(canonical(scan))
    assert np.array_equal(image, volume[lps_slice_index(scan, case.discs.L3L4)])
    assert not np.array_equal(image, volume[lps_slice_index(scan, case.discs.L5S1)])
    fig = method_figure.method_figure(image, label, n_stages=2, backend="sam2", caption="backpain_t2w")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "nnU-Net 1" in texts and "nnU-Net 2" in texts and "nnU-Net 3" not in texts
    assert any("SAM2" in t for t in texts) and any("2 refinements" in t for t in texts)
    with pytest.raises(ValueError, match="2-D"):
        method_figure.method_figure(np.zeros((2, 4, 4)), None)
    with pytest.raises(ValueError, match="label shape"):
        method_figure.method_figure(image, label[:-1])


def test_paths_on_a_page_name_no_folder_of_the_build_machine(tmp_path):
    root, home = tmp_path / "repo", tmp_path / "home"
    assert provenance.shown_path(str(root / "config" / "demo.yaml"), root, home) == "config/demo.yaml"
    assert provenance.shown_path(str(home / "scans" / "a.yaml"), root, home) == "~/scans/a.yaml"
    assert provenance.shown_path("/mnt/data/ckpt/sam2.pt", root, home) == "…/sam2.pt"
    relative = "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert provenance.shown_path(relative, root, home) == relative


def test_pages_name_the_git_commit_and_whether_the_code_differs_from_it(tmp_path):
    import subprocess

    from nnsam2_utils.report.provenance import git_commit

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout

    assert git_commit(tmp_path) == "not a git checkout"
    git("init", "-q")
    (tmp_path / "nnsam2_utils").mkdir()
    (tmp_path / "nnsam2_utils" / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git("rev-parse", "--short=12", "HEAD").strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "notes.txt").write_text("untracked, outside the code\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "nnsam2_utils" / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{head} + uncommitted changes"
