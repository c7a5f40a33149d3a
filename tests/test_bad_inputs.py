"""The catalogue of bad inputs: each one, through the entry point a user hits, stops with a clear error.

Every entry builds one bad input in a fresh folder, runs the public entry point that meets it
(manifest loading, the prepare step, the annotated slice of stage 0, checkpoint verification)
and asserts the error type and that the message names the file, the problem and the fix. The
input files are hashed before and after: a failing step never modifies them.

``benchmarks/bad_inputs_table.py`` runs the same catalogue and prints the table of messages.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from nnsam2_utils.errors import CheckpointError, DataError, GeometryError, ManifestError, Nnsam2Error


# --------------------------------------------------------------------------- building bad inputs
def _image(array: np.ndarray, origin=(0.0, 0.0, 0.0), spacing=(0.9, 0.9, 4.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if image.GetDimension() == 3:
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
    return image


def scan_array(nz: int = 10) -> np.ndarray:
    """A float32 ramp volume (z, y, x) = (nz, 6, 8)."""
    z, y, x = np.mgrid[:nz, :6, :8]
    return (z * 100 + y * 10 + x).astype(np.float32)


def label_array(nz: int = 10) -> np.ndarray:
    """Two label blocks (1 image-left, 2 image-right) on every slice."""
    label = np.zeros((nz, 6, 8), np.uint8)
    label[:, 1:4, 1:3] = 1
    label[:, 1:4, 5:7] = 2
    return label


def write_dataset(
    root: Path,
    image: sitk.Image | None = None,
    label: sitk.Image | None = None,
    case: dict | None = None,
    top: dict | None = None,
) -> Path:
    """A one-case dataset under ``root/d`` and its manifest ``root/m.yaml``; returns the manifest path."""
    from nnsam2_utils.data.io import write_image

    data = root / "d"
    data.mkdir(parents=True, exist_ok=True)
    write_image(image if image is not None else _image(scan_array()), data / "img.nii.gz")
    write_image(label if label is not None else _image(label_array()), data / "seg.nii.gz")
    entry = {"id": "c1", "image": "img.nii.gz", "label": "seg.nii.gz", "discs": {"L3L4": 8, "L5S1": 1}}
    entry.update(case or {})
    manifest = {
        "name": "t",
        "modality": "MRI",
        "sequence": "T2w",
        "root": "d",
        "label_map": {1: 1, 2: 2},
        "cases": [entry],
    }
    manifest.update(top or {})
    path = root / "m.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def run_prepare(manifest_path: Path) -> Callable[[], object]:
    """The prepare step (01_prepare) of a manifest."""

    def call():
        from nnsam2_utils.data.manifest import load_manifest
        from nnsam2_utils.prepare.dataset import prepare_dataset

        return prepare_dataset(load_manifest(manifest_path), manifest_path.parent / "prepared")

    return call


@dataclass(frozen=True)
class Bad:
    """One bad input: ``build(folder)`` writes it and returns (entry point, the file the message must name)."""

    id: str
    what: str
    entry: str
    build: Callable[[Path], tuple[Callable[[], object], Path]]
    error: type[Nnsam2Error]
    problem: str
    fix: str


def _missing_manifest(root: Path):
    from nnsam2_utils.data.manifest import load_manifest

    path = root / "absent.yaml"
    return (lambda: load_manifest(path)), path


def _missing_image(root: Path):
    path = write_dataset(root)
    (root / "d" / "img.nii.gz").unlink()
    return run_prepare(path), root / "d" / "img.nii.gz"


def _truncated(root: Path):
    path = write_dataset(root)
    image = root / "d" / "img.nii.gz"
    raw = image.read_bytes()
    image.write_bytes(raw[: len(raw) // 2])
    return run_prepare(path), image


def _corrupted(root: Path):
    path = write_dataset(root)
    image = root / "d" / "img.nii.gz"
    raw = bytearray(image.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
    image.write_bytes(bytes(raw))
    return run_prepare(path), image


def _uncompressed_truncated(root: Path):
    path = write_dataset(root, case={"image": "img.nii"})
    image = root / "d" / "img.nii"
    raw = gzip.decompress((root / "d" / "img.nii.gz").read_bytes())
    image.write_bytes(raw[: len(raw) - 200])
    return run_prepare(path), image


def _geometry(root: Path):
    path = write_dataset(root, label=_image(label_array(), origin=(5.0, 0.0, 0.0)))
    return run_prepare(path), root / "d" / "seg.nii.gz"


def _label_values(root: Path):
    label = label_array()
    label[3, 2, 2] = 7
    path = write_dataset(root, label=_image(label))
    return run_prepare(path), root / "d" / "seg.nii.gz"


def _with_value(value: float):
    def build(root: Path):
        array = scan_array()
        array[4, 3, 3] = value
        path = write_dataset(root, image=_image(array))
        return run_prepare(path), root / "d" / "img.nii.gz"

    return build


def _two_d(root: Path):
    path = write_dataset(root, image=_image(scan_array()[0]))
    return run_prepare(path), root / "d" / "img.nii.gz"


def _four_d(root: Path):
    path = write_dataset(root, image=sitk.GetImageFromArray(np.stack([scan_array()] * 2, axis=0), isVector=False))
    return run_prepare(path), root / "d" / "img.nii.gz"


def _discs(discs: dict):
    def build(root: Path):
        path = write_dataset(root, case={"discs": discs})
        return run_prepare(path), root / "d" / "img.nii.gz"

    return build


def _manifest(mutate: Callable[[dict], None]):
    def build(root: Path):
        path = write_dataset(root)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        mutate(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return run_prepare(path), path

    return build


def _not_yaml(root: Path):
    path = write_dataset(root)
    path.write_text("name: [unclosed\ncases: {")
    return run_prepare(path), path


def _checksum(root: Path):
    path = write_dataset(root, case={"sha256": {"image": hashlib.sha256(b"another file").hexdigest()}})
    return run_prepare(path), root / "d" / "img.nii.gz"


def _escape(root: Path):
    path = write_dataset(root, case={"image": "../outside.nii.gz"})
    (root / "outside.nii.gz").write_bytes((root / "d" / "img.nii.gz").read_bytes())
    return run_prepare(path), path


def _prepared_case(root: Path, label: np.ndarray) -> Path:
    """A prepared case folder (what 01_prepare writes) with the given label stack; returns the dataset folder."""
    from nnsam2_utils.data.geometry import from_stack
    from nnsam2_utils.data.io import write_image

    folder = root / "prepared" / "t"
    grid = _image(np.zeros(label.shape, np.float32))
    write_image(from_stack(label, grid), folder / "c1" / "label.nii.gz")
    return folder


def _annotated(slice_index: int, empty_top: bool):
    def build(root: Path):
        from nnsam2_utils.propagate.run import annotated_slice_mask

        label = label_array(7)
        if empty_top:
            label[0] = 0
        folder = _prepared_case(root, label)
        return (lambda: annotated_slice_mask(folder, "c1", slice_index)), folder / "c1" / "label.nii.gz"

    return build


def _checkpoint_hash(root: Path):
    from nnsam2_utils.propagate.litemedsam import load_model

    path = root / "lite_medsam.pth"
    path.write_bytes(b"not the LiteMedSAM weights")
    return (lambda: load_model("cpu", path)), path


def _checkpoint_missing(root: Path):
    from nnsam2_utils.data.checkpoints import verify_checkpoint

    path = root / "models" / "sam2.1_hiera_large.pt"
    return (lambda: verify_checkpoint(path, "0" * 64, "Download sam2.1_hiera_large.pt.")), path


def _checkpoint_unset_variable(root: Path):
    """A checkpoint path through a variable that is not set, as ``data check --profile``, the start check and
    stage 0 expand it."""
    from nnsam2_utils.data.checkpoints import expand_path

    path = Path("${NNSAM2_UNSET_MODELS}") / "sam2.1_hiera_large.pt"
    return (lambda: expand_path(path, root, "propagation.sam2_checkpoint")), path


def _text_manifest(edit: Callable[[str], str]):
    """A manifest whose text is edited (what YAML cannot say after a load: repeated keys, leading zeros)."""

    def build(root: Path):
        path = write_dataset(root)
        path.write_text(edit(path.read_text(encoding="utf-8")))
        return run_prepare(path), path

    return build


def _latin1_manifest(root: Path):
    path = write_dataset(root)
    path.write_bytes((path.read_text(encoding="utf-8") + "description: Patientin Müller\n").encode("latin-1"))
    return run_prepare(path), path


def _folder_as_manifest(root: Path):
    from nnsam2_utils.data.manifest import load_manifest

    write_dataset(root)
    return (lambda: load_manifest(root / "d")), root / "d"


def _label_as(array: np.ndarray):
    def build(root: Path):
        path = write_dataset(root, label=_image(array))
        return run_prepare(path), root / "d" / "seg.nii.gz"

    return build


def _complex_image(root: Path):
    path = write_dataset(root, image=_image((scan_array() + 1j).astype(np.complex64)))
    return run_prepare(path), root / "d" / "img.nii.gz"


def _fat_with_nan(root: Path):
    """A Dixon fat image in NRRD (not NIfTI) with one NaN voxel."""
    from nnsam2_utils.data.io import write_image

    fat = scan_array().astype(np.float32)
    fat[4, 2, 2] = np.nan
    path = write_dataset(root, case={"fat": "fat.nrrd"}, top={"sequence": "Dixon"})
    write_image(_image(fat), root / "d" / "fat.nrrd", compress=False)
    return run_prepare(path), root / "d" / "fat.nrrd"


_FLOAT_LABEL = label_array().astype(np.float32) * 0.9999
_NEGATIVE_LABEL = label_array().astype(np.int16)
_NEGATIVE_LABEL[0, 0, 0] = -1


CATALOGUE: list[Bad] = [
    Bad(
        "missing-manifest",
        "manifest file missing",
        "load_manifest",
        _missing_manifest,
        ManifestError,
        "manifest not found",
        "Create it",
    ),
    Bad(
        "missing-image",
        "image file named in the manifest missing",
        "prepare",
        _missing_image,
        DataError,
        "file not found",
        "Check the path in the manifest",
    ),
    Bad(
        "truncated-nifti",
        "NIfTI (.nii.gz) cut in half",
        "prepare",
        _truncated,
        DataError,
        "truncated or corrupted",
        "re-export or re-download",
    ),
    Bad(
        "corrupted-nifti",
        "four bytes flipped inside a .nii.gz",
        "prepare",
        _corrupted,
        DataError,
        "CRC check failed",
        "re-export or re-download",
    ),
    Bad(
        "truncated-nii",
        "uncompressed .nii missing its last 200 bytes",
        "prepare",
        _uncompressed_truncated,
        DataError,
        "truncated or corrupted",
        "re-export or re-download",
    ),
    Bad(
        "geometry",
        "label origin 5 mm off the image's",
        "prepare",
        _geometry,
        GeometryError,
        "does not match the grid",
        "copy the header of the file that is right",
    ),
    Bad(
        "label-values",
        "label value 7 not in label_map",
        "prepare",
        _label_values,
        DataError,
        "label values [7] are not in the manifest's label_map",
        "Add them to label_map",
    ),
    Bad(
        "nan-voxels",
        "one NaN voxel in the image",
        "prepare",
        _with_value(np.nan),
        DataError,
        "1 NaN or Inf voxels",
        "Replace them",
    ),
    Bad(
        "inf-voxels",
        "one +Inf voxel in the image",
        "prepare",
        _with_value(np.inf),
        DataError,
        "1 NaN or Inf voxels",
        "Replace them",
    ),
    Bad(
        "2d-image",
        "a 2-D image",
        "prepare",
        _two_d,
        DataError,
        "expected a 3-D image, found 2-D",
        "Export a single 3-D volume",
    ),
    Bad(
        "4d-image",
        "a 4-D image (two time points)",
        "prepare",
        _four_d,
        DataError,
        "expected a 3-D image, found 4-D",
        "Export a single 3-D volume",
    ),
    Bad(
        "discs-reversed",
        "L3L4 and L5S1 swapped",
        "prepare",
        _discs({"L3L4": 1, "L5S1": 8}),
        GeometryError,
        "disc L3L4 (slice 1) lies inferior to L5S1 (slice 8)",
        "Swap the two disc levels",
    ),
    Bad(
        "region-implausible",
        "L3L4 and L5S1 on neighbouring slices (4 mm apart)",
        "prepare",
        _discs({"L3L4": 2, "L5S1": 1}),
        GeometryError,
        "lie 4 mm apart; no lumbar spine spans L3/L4 to L5/S1 in less than 10",
        "Check that the slice numbers are of these discs",
    ),
    Bad(
        "disc-out-of-range",
        "L3L4 beyond the last slice",
        "prepare",
        _discs({"L3L4": 12, "L5S1": 1}),
        GeometryError,
        "disc slice index 12 is outside the volume",
        "Fix the disc levels in the manifest",
    ),
    Bad(
        "disc-negative",
        "negative disc slice",
        "prepare",
        _manifest(lambda d: d["cases"][0]["discs"].update(L5S1=-1)),
        ManifestError,
        "cases.0.discs.L5S1: Input should be greater than or equal to 0",
        "Correct the fields named",
    ),
    Bad(
        "manifest-unknown-key",
        "unknown top-level key 'colour'",
        "prepare",
        _manifest(lambda d: d.update(colour="blue")),
        ManifestError,
        "colour: Extra inputs are not permitted",
        "Correct the fields named",
    ),
    Bad(
        "manifest-unknown-case-key",
        "unknown case key 'labels'",
        "prepare",
        _manifest(lambda d: d["cases"][0].update(labels="seg.nii.gz")),
        ManifestError,
        "cases.0.labels: Extra inputs are not permitted",
        "Correct the fields named",
    ),
    Bad(
        "manifest-wrong-type",
        "disc level given as text",
        "prepare",
        _manifest(lambda d: d["cases"][0]["discs"].update(L3L4="top")),
        ManifestError,
        "cases.0.discs.L3L4: Input should be a valid integer",
        "Correct the fields named",
    ),
    Bad(
        "manifest-duplicate-id",
        "two cases with id c1",
        "prepare",
        _manifest(lambda d: d["cases"].append(dict(d["cases"][0]))),
        ManifestError,
        "duplicate case ids: ['c1']",
        "Correct the fields named",
    ),
    Bad(
        "manifest-not-yaml",
        "broken YAML syntax",
        "prepare",
        _not_yaml,
        ManifestError,
        "not valid YAML",
        "Fix the syntax",
    ),
    Bad(
        "checksum",
        "image differs from its pinned sha256",
        "prepare",
        _checksum,
        DataError,
        "SHA-256 mismatch",
        "download or export it again",
    ),
    Bad(
        "path-escape",
        "image path '../outside.nii.gz' leaves the data root",
        "prepare",
        _escape,
        ManifestError,
        "path '../outside.nii.gz' escapes the data root",
        "Use a path inside the root",
    ),
    Bad(
        "annotated-slice-empty",
        "annotated (top) slice has no label",
        "stage 0 annotated slice",
        _annotated(0, empty_top=True),
        DataError,
        "slice 0 of the region has no label",
        "Label both muscles",
    ),
    Bad(
        "annotated-slice-outside",
        "annotated slice 9 of a 7-slice region",
        "stage 0 annotated slice",
        _annotated(9, empty_top=False),
        GeometryError,
        "annotated slice 9 is outside the region (slices 0..6",
        "Annotate a slice inside the region",
    ),
    Bad(
        "checkpoint-hash",
        "LiteMedSAM weights file with another SHA-256",
        "LiteMedSAM load_model",
        _checkpoint_hash,
        CheckpointError,
        "SHA-256 mismatch",
        "download it again",
    ),
    Bad(
        "checkpoint-missing",
        "SAM2 checkpoint file missing",
        "verify_checkpoint",
        _checkpoint_missing,
        CheckpointError,
        "checkpoint not found",
        "Put the checkpoint file at",
    ),
    Bad(
        "checkpoint-unset-variable",
        "SAM2 checkpoint path ${NNSAM2_UNSET_MODELS}/… with the variable unset",
        "expand_path (data check --profile, start check, stage 0)",
        _checkpoint_unset_variable,
        CheckpointError,
        "environment variable NNSAM2_UNSET_MODELS is not set",
        "Set it (export NNSAM2_UNSET_MODELS=",
    ),
    Bad(
        "manifest-repeated-key",
        "label_map with the key 1 given twice (the last would win, sides swapped)",
        "prepare",
        _text_manifest(lambda s: s.replace("label_map:\n", "label_map:\n  1: 2\n", 1)),
        ManifestError,
        "key 1 is given twice",
        "Fix the syntax",
    ),
    Bad(
        "manifest-leading-zero",
        "disc level written 08 (YAML 1.1 reads a leading zero as octal)",
        "prepare",
        _text_manifest(lambda s: s.replace("L3L4: 8", "L3L4: 010", 1)),
        ManifestError,
        "has a leading zero",
        "write it without",
    ),
    Bad(
        "manifest-latin1",
        "manifest saved as Latin-1",
        "prepare",
        _latin1_manifest,
        ManifestError,
        "not UTF-8 text",
        "Save the file as UTF-8",
    ),
    Bad(
        "manifest-folder",
        "a folder given as the manifest",
        "load_manifest",
        _folder_as_manifest,
        ManifestError,
        "is a folder",
        "give the YAML file itself",
    ),
    Bad(
        "label-float",
        "label volume stored as float 0.9999 / 1.9998",
        "prepare",
        _label_as(_FLOAT_LABEL),
        DataError,
        "label values are not whole numbers",
        "integer label map",
    ),
    Bad(
        "label-negative",
        "label value -1",
        "prepare",
        _label_as(_NEGATIVE_LABEL),
        DataError,
        "label value -1 is negative",
        "class numbers >= 0",
    ),
    Bad(
        "image-complex",
        "complex-valued image",
        "prepare",
        _complex_image,
        DataError,
        "complex-valued voxels",
        "Export the magnitude image",
    ),
    Bad(
        "fat-nan-nrrd",
        "Dixon fat image (NRRD) with a NaN voxel",
        "prepare",
        _fat_with_nan,
        DataError,
        "holds 1 NaN or Inf voxels",
        "Replace them",
    ),
    Bad(
        "manifest-unknown-placeholder",
        "external predictions' path pattern with {case} (only {id} exists; was a KeyError traceback)",
        "prepare",
        _manifest(
            lambda d: d.update(external=[{"name": "ts", "pattern": "ts/{case}.nii.gz", "label_map": {1: 1, 2: 2}}])
        ),
        ManifestError,
        "external.0.pattern: Value error, path pattern 'ts/{case}.nii.gz' has the unknown placeholder(s) {case}",
        "placeholders allowed: {id}",
    ),
    Bad(
        "manifest-decimate-nan",
        "decimate_to_mm: .nan (was a ValueError traceback at the decimation)",
        "prepare",
        _manifest(lambda d: d.update(modality="CT", sequence="CT", decimate_to_mm=float("nan"))),
        ManifestError,
        "decimate_to_mm: Value error, decimate_to_mm must be a slice thickness in mm above 0",
        "left out for no decimation",
    ),
]


def folder_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under a folder (the inputs of a bad case)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_bad(bad: Bad, folder: Path) -> tuple[Nnsam2Error, Path]:
    """Build one bad input in ``folder`` and return the error its entry point raises and the file it must name."""
    call, named = bad.build(folder)
    inputs = folder_digest(folder)
    try:
        call()
    except Nnsam2Error as exc:
        changed = {k for k, v in folder_digest(folder).items() if inputs.get(k, v) != v}
        if changed:
            raise AssertionError(f"{bad.id}: input files modified by a failing step: {sorted(changed)}") from exc
        return exc, named
    raise AssertionError(f"{bad.id}: no error raised")


@pytest.mark.parametrize("bad", CATALOGUE, ids=[b.id for b in CATALOGUE])
def test_bad_input_gets_a_clear_error(bad, tmp_path):
    error, named = run_bad(bad, tmp_path)
    message = str(error)
    assert type(error) is bad.error, (type(error).__name__, message)
    assert str(named) in message or str(named.resolve()) in message, message
    assert bad.problem in message, message
    assert bad.fix in message, message


def test_the_catalogue_covers_every_item_of_the_issue():
    ids = {b.id for b in CATALOGUE}
    required = {
        "missing-image",
        "truncated-nifti",
        "corrupted-nifti",
        "geometry",
        "label-values",
        "annotated-slice-empty",
        "annotated-slice-outside",
        "nan-voxels",
        "inf-voxels",
        "2d-image",
        "4d-image",
        "discs-reversed",
        "disc-out-of-range",
        "manifest-unknown-key",
        "manifest-wrong-type",
        "manifest-duplicate-id",
        "checksum",
        "checkpoint-hash",
        "path-escape",
    }
    assert required <= ids


def test_the_good_dataset_of_the_catalogue_prepares(tmp_path):
    """The builder's unmodified dataset passes, so each failure above comes from its one defect."""
    path = write_dataset(tmp_path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cases"][0]["sha256"] = {"image": folder_digest(tmp_path / "d")["img.nii.gz"]}
    path.write_text(yaml.safe_dump(data))
    table = run_prepare(path)()
    assert table.n_slices.tolist() == [8]


def test_a_checkpoint_variable_set_but_empty_is_named(tmp_path, monkeypatch):
    from nnsam2_utils.data.checkpoints import expand_path

    monkeypatch.setenv("NNSAM2_EMPTY_MODELS", "")
    with pytest.raises(CheckpointError) as info:
        expand_path("${NNSAM2_EMPTY_MODELS}/sam2.1_hiera_large.pt", tmp_path, "propagation.sam2_checkpoint")
    message = str(info.value)
    assert "NNSAM2_EMPTY_MODELS is set but empty" in message and "'/sam2.1_hiera_large.pt'" in message
    monkeypatch.setenv("NNSAM2_EMPTY_MODELS", str(tmp_path / "models"))
    assert expand_path("$NNSAM2_EMPTY_MODELS/a.pt", tmp_path) == tmp_path / "models" / "a.pt"
