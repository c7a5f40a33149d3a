"""External predictions listed in a manifest are prepared like expert labels and scored beside nnsam2."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from nnsam2_utils.baselines import external
from nnsam2_utils.data.manifest import load_manifest
from nnsam2_utils.errors import DataError, GeometryError
from nnsam2_utils.prepare.dataset import prepare_dataset
from nnsam2_utils.report.results import collect_dsc
from nnsam2_utils.workflow.workspace import Workspace

SOURCE = {11: 1, 12: 2}  # e.g. a tool's own label values for right and left back muscles


def write_predictions(manifest, folder, shift: dict[str, int]) -> None:
    """The expert labels recoded to the tool's values (plus a stray organ label, 99), some shifted."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in manifest.cases:
        label = sitk.ReadImage(str(manifest.resolve(case.label)))
        values = sitk.GetArrayFromImage(label)
        classes = np.zeros_like(values)
        for source, cls in manifest.label_map.items():  # the expert label's own values (e.g. four muscles)
            classes[values == source] = cls
        coded = np.where(classes == 1, 11, np.where(classes == 2, 12, 0)).astype(np.uint16)
        coded[0, :3, :3] = 99
        coded = np.roll(coded, shift.get(case.id, 0), axis=2)
        out = sitk.GetImageFromArray(coded)
        out.CopyInformation(label)
        sitk.WriteImage(out, str(folder / f"{case.id}_tool.nii.gz"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_cohort):
    root = tmp_path_factory.mktemp("external")
    data = root / "data"
    shutil.copytree(tiny_cohort, data)
    path = data / "backpain_t2w.yaml"
    manifest = load_manifest(path)
    shifted = manifest.cases[0].id
    write_predictions(manifest, manifest.root_path / "tool", {shifted: 6})
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["external"] = [
        {
            "name": "Tool v1",
            "pattern": "tool/{id}_tool.nii.gz",
            "label_map": SOURCE,
            "citation": "a segmentation tool run elsewhere",
        }
    ]
    path.write_text(yaml.safe_dump(raw))
    manifest = load_manifest(path)
    workspace = Workspace(root / "work")
    prepare_dataset(manifest, workspace.prepared(manifest.name))
    return manifest, workspace, shifted


def test_external_predictions_are_scored_on_the_prepared_grid(dataset):
    manifest, workspace, shifted = dataset
    rows = external.score_dataset(workspace, manifest)
    per_scan = rows.groupby("case").dsc.mean()
    assert set(rows["stage"]) == {"external_tool_v1"}
    assert len(per_scan) == len(manifest.cases)
    exact = per_scan.drop(shifted)
    assert np.allclose(exact, 1.0)  # recoded copies of the truth: stray value 99 ignored
    assert per_scan[shifted] < 0.95  # a shifted prediction scores lower
    prepared = sitk.ReadImage(str(workspace.labels("external_tool_v1", manifest.name, shifted)))
    truth = sitk.ReadImage(str(workspace.prepared(manifest.name, shifted) / "label.nii.gz"))
    assert prepared.GetSize() == truth.GetSize() and prepared.GetOrigin() == truth.GetOrigin()
    collected = collect_dsc(workspace, [manifest.name])
    assert "external_tool_v1" in set(collected["stage"])


def test_missing_or_misaligned_external_prediction_names_the_file(dataset):
    manifest, workspace, _ = dataset
    case = manifest.cases[1]
    path = manifest.resolve(manifest.external[0].pattern.format(id=case.id))
    original = path.read_bytes()
    try:
        image = sitk.ReadImage(str(path))
        image.SetSpacing([s * 1.5 for s in image.GetSpacing()])
        sitk.WriteImage(image, str(path))
        with pytest.raises(GeometryError, match=f"{path.name} does not match the grid"):
            external.prepared_prediction(manifest, case, manifest.external[0])
        path.unlink()
        with pytest.raises(DataError, match="prediction of case .* is missing"):
            external.prepared_prediction(manifest, case, manifest.external[0])
    finally:
        path.write_bytes(original)


def test_external_label_map_must_target_the_classes(tiny_cohort, tmp_path):
    from nnsam2_utils.errors import ManifestError

    raw = yaml.safe_load((tiny_cohort / "backpain_t2w.yaml").read_text(encoding="utf-8"))
    raw["root"] = str(load_manifest(tiny_cohort / "backpain_t2w.yaml").root_path)
    raw["external"] = [{"name": "bad", "pattern": "{id}.nii.gz", "label_map": {1: 5}}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ManifestError, match="0, 1 or 2"):
        load_manifest(path)
