"""``nnsam2 data check`` on real files: a clean dataset passes; each kind of damage is caught with
its own message naming the file and the fix, all problems reported at once, inputs untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from nnsam2_utils.cli import main
from nnsam2_utils.data.checks import check_manifest, path_sha256, report
from nnsam2_utils.data.io import read_image, sha256, write_image


def tiny_dataset(folder: Path, name: str) -> Path:
    """One dataset of the tiny phantom cohort (checksums pinned by the generator); returns its manifest."""
    from nnsam2_utils.data.synthetic.cohort import generate_cohort

    return generate_cohort(folder, size="tiny", seed=0, datasets=[name])[0]


def private_copy(manifest: Path, tmp_path: Path) -> Path:
    """A copy of a dataset (its folder, named like its manifest, and the manifest) to damage."""
    shutil.copytree(manifest.parent / manifest.stem, tmp_path / manifest.stem)
    return Path(shutil.copy(manifest, tmp_path / manifest.name))


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """The tiny phantom's backpain_t2w dataset (3 scans)."""
    return tiny_dataset(tmp_path_factory.mktemp("clean"), "backpain_t2w")


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    """A private copy of the clean dataset to damage."""
    return private_copy(clean, tmp_path)


def edit(manifest: Path, change) -> None:
    data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    change(data)
    manifest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def kinds(problems) -> list[str]:
    return sorted(p.kind for p in problems)


def test_clean_dataset_passes(clean):
    assert check_manifest(clean) == []
    assert main(["data", "check", str(clean)]) == 0


def test_corrupted_file(copy):
    path = copy.parent / "backpain_t2w" / "images" / "t2w_002.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated download
    problems = check_manifest(copy, checksums=False)
    assert kinds(problems) == ["unreadable"]
    assert problems[0].file == str(path)
    assert "truncated or corrupted" in problems[0].what and "re-download" in problems[0].what


def test_wrong_checksum(copy):
    label = copy.parent / "backpain_t2w" / "labels" / "t2w_001.nii.gz"
    edit(copy, lambda d: d["cases"][0]["sha256"].update(label="0" * 64))  # pinned for another version of the file
    problems = check_manifest(copy)
    assert kinds(problems) == ["checksum"]
    assert problems[0].file == str(label)
    assert f"expected {'0' * 64}, found {sha256(label)}" in problems[0].what
    assert f"set its sha256 in the manifest to {sha256(label)}" in problems[0].fix


def test_mismatched_geometry(copy):
    label_path = copy.parent / "backpain_t2w" / "labels" / "t2w_003.nii.gz"
    label = read_image(label_path)
    label.SetSpacing((label.GetSpacing()[0] * 1.5, label.GetSpacing()[1], label.GetSpacing()[2]))
    write_image(label, label_path)
    problems = check_manifest(copy, checksums=False)
    assert kinds(problems) == ["geometry"]
    assert problems[0].file == str(label_path)
    assert "does not match the grid" in problems[0].what and "spacing" in problems[0].what
    assert "resample it onto the image grid" in problems[0].what


def test_label_outside_the_map(copy):
    label_path = copy.parent / "backpain_t2w" / "labels" / "t2w_001.nii.gz"
    label = read_image(label_path)
    array = sitk.GetArrayFromImage(label)
    array[array == 4] = 7  # a value the manifest does not map
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(label)
    write_image(out, label_path)
    problems = check_manifest(copy, checksums=False)
    assert kinds(problems) == ["label-values"]
    assert problems[0].file == str(label_path)
    assert "label values [7] are not in the manifest's label_map" in problems[0].what
    assert "add them to label_map" in problems[0].fix


def test_every_problem_reported_at_once(copy, capsys):
    folder = copy.parent / "backpain_t2w"
    (folder / "images" / "t2w_001.nii.gz").unlink()
    image = folder / "images" / "t2w_002.nii.gz"
    image.write_bytes(image.read_bytes()[:100])
    label = read_image(folder / "labels" / "t2w_003.nii.gz")
    label.SetOrigin((0.0, 0.0, 0.0))
    write_image(label, folder / "labels" / "t2w_003.nii.gz")

    def change(data):
        data["cases"][2]["discs"]["L3L4"] = 40  # beyond the 9 slices

    edit(copy, change)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    problems = check_manifest(copy, checksums=False)
    assert kinds(problems) == ["discs", "geometry", "missing", "unreadable"]
    assert {p.kind: Path(p.file).name for p in problems} == {
        "missing": "t2w_001.nii.gz",
        "unreadable": "t2w_002.nii.gz",
        "geometry": "t2w_003.nii.gz",
        "discs": "t2w_003.nii.gz",
    }
    assert all(p.fix or "." in p.what for p in problems)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # nothing modified
    assert main(["data", "check", "--no-checksums", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "4 problem(s)" in out and out.count("\n[") + out.startswith("[") >= 3
    assert report(problems).splitlines()[0].startswith("[missing]")


def test_annotation_with_two_slices(copy):
    folder = copy.parent / "backpain_t2w"
    label = read_image(folder / "labels" / "t2w_001.nii.gz")
    array = sitk.GetArrayFromImage(label)
    keep = np.zeros_like(array)
    keep[5:7] = array[5:7]  # two labelled slices
    note = sitk.GetImageFromArray(keep)
    note.CopyInformation(label)
    write_image(note, folder / "one_slice.nii.gz")
    edit(copy, lambda d: d.update(annotation={"case": "t2w_001", "file": "one_slice.nii.gz"}))
    problems = check_manifest(copy, checksums=False)
    assert kinds(problems) == ["annotation"]
    assert "exactly one slice" in problems[0].what and "found 2 labelled slices" in problems[0].what


def test_missing_root_is_one_problem_with_how_to_get(copy, tmp_path):
    edit(copy, lambda d: d.update(root="${NNSAM2_TEST_NOWHERE}/data"))
    problems = check_manifest(copy)
    assert kinds(problems) == ["missing"]
    assert "data root of 'backpain_t2w' not found" in problems[0].what
    assert "nnsam2 demo generate" in problems[0].fix  # the manifest's source.how_to_get


def test_dicom_folder_checksum_is_stable(tmp_path):
    from nnsam2_utils.data.dicom import write_series

    image = sitk.GetImageFromArray(np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8))
    folder = write_series(image, tmp_path / "series")
    first = path_sha256(folder)
    assert first == path_sha256(folder) and len(first) == 64
    (folder / "slice_0002.dcm").write_bytes(b"not dicom")
    assert path_sha256(folder) != first


REAL = ("backpain_t1w", "backpain_t2w", "totalseg_ct", "word_ct", "myosegmentum_dixon")


@pytest.mark.parametrize("name", REAL)
def test_public_dataset_manifests_say_where_to_get_the_data(name, tmp_path, monkeypatch):
    """Without the data, each public manifest gives one problem: its root, with how to get the files."""
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.workflow.workspace import repo_root

    monkeypatch.setenv("NNSAM2_DATA", str(tmp_path / "nowhere"))
    path = repo_root() / "data_manifest" / f"{name}.yaml"
    manifest = load_manifest(path, cases_csv=False)
    assert manifest.name == name and manifest.cases_csv is not None
    assert manifest.source.url and manifest.source.licence and manifest.source.layout and manifest.source.disc_source
    problems = check_manifest(path)
    assert kinds(problems) == ["missing"]
    assert problems[0].file == str(tmp_path / "nowhere" / name)
    assert " ".join(manifest.source.how_to_get.split()) in problems[0].fix


def test_word_manifest_reads_the_authors_disc_table_format(tmp_path, monkeypatch):
    """The WORD manifest maps a table laid out like the authors' (pid = file name, L3_L4, L5_S1, …)."""
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.workflow.workspace import repo_root

    root = tmp_path / "word_ct"
    root.mkdir()
    (root / "word_img_size_100_to_L2L5.csv").write_text(
        ",pid,L5_S1,L4_L5,L3_L4,L3_L2,shape0\n0,word_0007.nii.gz,80,92,104,115,170\n0,word_0019.nii.gz,60,70,81,93,150\n"
    )
    monkeypatch.setenv("NNSAM2_DATA", str(tmp_path))
    path = repo_root() / "data_manifest" / "word_ct.yaml"
    manifest = load_manifest(path)
    assert [c.id for c in manifest.cases] == ["word_0007", "word_0019"]
    assert (manifest.cases[0].discs.L3L4, manifest.cases[0].discs.L4L5, manifest.cases[0].discs.L5S1) == (104, 92, 80)
    assert (
        manifest.cases[1].image == "images/word_0019.nii.gz"
        and manifest.cases[1].label == "lpm_labels/word_0019.nii.gz"
    )
    problems = check_manifest(path)
    assert kinds(problems) == ["missing"] * 4  # two images, two labels, each named
    assert str(root / "images" / "word_0007.nii.gz") in {p.file for p in problems}


def test_template_is_a_valid_manifest():
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.workflow.workspace import repo_root

    manifest = load_manifest(repo_root() / "data_manifest" / "TEMPLATE.yaml", cases_csv=False)
    assert manifest.annotation.case == "patient01" and manifest.muscle_map[11] == "R-ES"


def test_reversed_disc_levels(copy):
    def swap(data):
        discs = data["cases"][1]["discs"]
        discs["L3L4"], discs["L5S1"] = discs["L5S1"], discs["L3L4"]

    edit(copy, swap)
    problems = check_manifest(copy, checksums=False)
    assert kinds(problems) == ["discs"]
    assert problems[0].file.endswith("t2w_002.nii.gz") and "Swap the two disc levels" in problems[0].what


def test_fetch_verifies_and_never_overwrites(tmp_path):
    """`data fetch` on a direct link (file:// here): downloads, checks the pinned SHA-256, keeps what is there."""
    import hashlib

    from nnsam2_utils.data.fetch import fetch_manifest
    from nnsam2_utils.errors import DataError

    payload = tmp_path / "served" / "archive.zip"
    payload.parent.mkdir()
    payload.write_bytes(b"scan archive " * 1000)
    good = hashlib.sha256(payload.read_bytes()).hexdigest()
    manifest = tmp_path / "m.yaml"

    def write(sha):
        manifest.write_text(
            yaml.safe_dump(
                {
                    "name": "fetched",
                    "modality": "CT",
                    "sequence": "CT",
                    "root": "data",
                    "cases_csv": {"file": "cases.csv"},
                    "source": {"downloads": [{"url": payload.as_uri(), "path": "archive.zip", "sha256": sha}]},
                }
            )
        )

    write("f" * 64)
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch_manifest(manifest)
    assert not (tmp_path / "data" / "archive.zip").exists()  # a bad download never lands
    write(good)
    assert fetch_manifest(manifest) == [tmp_path / "data" / "archive.zip"]
    assert (tmp_path / "data" / "archive.zip").read_bytes() == payload.read_bytes()
    (tmp_path / "data" / "archive.zip").write_bytes(b"edited by the user")
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch_manifest(manifest)
    assert (tmp_path / "data" / "archive.zip").read_bytes() == b"edited by the user"  # never overwritten


@pytest.fixture(scope="module")
def dixon(tmp_path_factory) -> Path:
    """The tiny phantom's Dixon dataset: water image, fat image and label per scan."""
    return tiny_dataset(tmp_path_factory.mktemp("dixon"), "bedrest_dixon")


@pytest.fixture
def dixon_copy(dixon, tmp_path) -> Path:
    return private_copy(dixon, tmp_path)


def case_files(manifest: Path, index: int = 0) -> dict[str, Path]:
    data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    case = data["cases"][index]
    return {k: manifest.parent / data.get("root", ".") / case[k] for k in ("image", "label", "fat")}


def test_a_water_image_that_lost_its_origin_is_named_and_its_header_fix_given(dixon_copy):
    """Seen on real files: the water image's origin was lost while fat image and label kept theirs. The water
    image is the file to fix (by copying the header), not the label or the fat image."""
    files = case_files(dixon_copy)
    water = read_image(files["image"])
    water.SetOrigin((0.0, 0.0, 0.0))
    write_image(water, files["image"])
    problems = check_manifest(dixon_copy, checksums=False)
    assert [(p.kind, p.file) for p in problems] == [("geometry", str(files["image"]))]
    assert "The image is the file to fix" in problems[0].what and "origin" in problems[0].what
    assert "CopyInformation" in problems[0].fix and str(files["label"]) in problems[0].fix


def test_a_one_millimetre_origin_shift_is_a_different_grid(dixon_copy):
    files = case_files(dixon_copy)
    label = read_image(files["label"])
    origin = label.GetOrigin()
    label.SetOrigin((origin[0] + 1.0, origin[1], origin[2]))
    write_image(label, files["label"])
    problems = check_manifest(dixon_copy, checksums=False)
    assert [(p.kind, p.file) for p in problems] == [("geometry", str(files["label"]))]
    assert "copy the header" in problems[0].what


@pytest.mark.parametrize("where", ["everywhere", "inside_region"])
def test_an_empty_label_or_fat_image_is_an_error(dixon_copy, where):
    """Resampling a label across a shifted grid can leave it all zeros (or all outside the region): an error."""
    files = case_files(dixon_copy)
    for name in ("label", "fat"):
        volume = read_image(files[name])
        array = np.zeros_like(sitk.GetArrayFromImage(volume))
        if where == "inside_region":
            array[0, 2:4, 2:4] = 1  # one corner of the most inferior slice only: below L5/S1
        empty = sitk.GetImageFromArray(array)
        empty.CopyInformation(volume)
        write_image(empty, files[name])
    problems = check_manifest(dixon_copy, checksums=False)
    assert kinds(problems) == ["empty", "empty"]
    assert {p.file for p in problems} == {str(files["label"]), str(files["fat"])}
    expected = "is empty (every voxel 0)" if where == "everywhere" else "empty inside the L3/L4–L5/S1 region"
    assert all(expected in p.what for p in problems)


BARE = {"name": "x", "modality": "CT", "sequence": "CT", "root": "data", "cases_csv": {"file": "cases.csv"}}


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://example.org/a.zip", "uses http://; only https://"),
        ("ftp://example.org/a.zip", "uses ftp://"),
        ("a.zip", "uses no scheme://"),
    ],
)
def test_fetch_refuses_links_other_than_https(tmp_path, url, message):
    from nnsam2_utils.data.fetch import fetch_manifest
    from nnsam2_utils.errors import DataError

    manifest = tmp_path / "m.yaml"
    downloads = [{"url": url, "path": "a.zip", "sha256": "0" * 64}]
    manifest.write_text(yaml.safe_dump({**BARE, "source": {"downloads": downloads}}), encoding="utf-8")
    with pytest.raises(DataError, match=message):
        fetch_manifest(manifest)
    assert not (tmp_path / "data").exists()


def test_fetch_unreachable_link_folder_destination_and_unpinned_file(tmp_path, capsys):
    payload = tmp_path / "served.bin"
    payload.write_bytes(b"x" * 100)
    manifest = tmp_path / "m.yaml"

    def write(url, path, sha=None):
        item = {"url": url, "path": path, **({"sha256": sha} if sha else {})}
        data = {**BARE, "source": {"downloads": [item]}}
        manifest.write_text(yaml.safe_dump(data), encoding="utf-8")

    write((tmp_path / "nowhere.bin").as_uri(), "a.bin", "0" * 64)
    assert main(["data", "fetch", str(manifest)]) != 0
    assert "could not be downloaded" in capsys.readouterr().err and not (tmp_path / "data" / "a.bin").exists()
    (tmp_path / "data" / "folder").mkdir(parents=True)
    write(payload.as_uri(), "folder", "0" * 64)
    assert main(["data", "fetch", str(manifest)]) != 0
    assert "is a folder" in capsys.readouterr().err
    write(payload.as_uri(), "b.bin")
    assert main(["data", "fetch", str(manifest)]) == 0
    assert "UNVERIFIED: the manifest pins no sha256" in capsys.readouterr().out


def test_data_check_of_a_profile_checks_its_sam2_checkpoint_as_the_run_reads_it(clean, tmp_path, monkeypatch, capsys):
    """``data check --profile``: the SAM2 checkpoint of a sam2 profile, missing, altered or behind an unset
    ``${VAR}``, is named with its fix (expanded as the run expands it), beside the manifests' own check."""
    from nnsam2_utils.workflow.preflight import missing_for_profile

    repo = Path(__file__).resolve().parents[1]
    profile = yaml.safe_load((repo / "config" / "tiny.yaml").read_text(encoding="utf-8"))
    profile["manifests"] = [str(clean)]
    profile["propagation"].update(backend="sam2", sam2_checkpoint="${NNSAM2_TEST_MODELS}/sam2.pt", sam2_sha256=None)
    config = tmp_path / "config"
    config.mkdir()
    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(config))
    monkeypatch.delenv("NNSAM2_TEST_MODELS", raising=False)

    def check(*options: str, **propagation) -> tuple[int, str]:
        profile["propagation"].update(propagation)
        (config / "tiny.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
        capsys.readouterr()
        code = main(["data", "check", "--quick", *options, "--profile", "tiny"])
        return code, capsys.readouterr().out

    code, out = check()
    assert code == 1 and f"{clean}: OK" in out and "run profile 'tiny' checkpoints: 1 problem(s)" in out, out
    assert "[checkpoint] propagation.sam2_checkpoint '${NNSAM2_TEST_MODELS}/sam2.pt': environment variable " in out
    assert "NNSAM2_TEST_MODELS is not set. Set it (export NNSAM2_TEST_MODELS=" in out, out

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("NNSAM2_TEST_MODELS", str(models))
    code, out = check()
    assert code == 1 and f"[checkpoint] {models / 'sam2.pt'}: checkpoint not found. Put the checkpoint file at" in out

    (models / "sam2.pt").write_bytes(b"stands in for the SAM2.1 weights")
    digest = sha256(models / "sam2.pt")
    code, out = check(sam2_sha256="0" * 64)
    assert code == 1 and f"SHA-256 mismatch (expected {'0' * 64}, found {digest})" in out, out
    assert check("--no-checksums")[0] == 0  # the digest is a checksum: skipped as the manifests' are
    code, out = check(sam2_sha256=digest)
    assert code == 0 and "run profile 'tiny' checkpoints: OK" in out, out
    assert missing_for_profile("tiny") == []  # the start check agrees

    code, out = check(backend="litemedsam", sam2_checkpoint="absent/sam2.pt")
    assert code == 0, out  # a profile that does not use SAM2 needs no SAM2 checkpoint
    del profile["manifests"][:]
    assert check(backend="sam2")[0] == 1  # a profile without own manifests still gets its checkpoint checked
