import pytest
import yaml

from nnsam2_utils.data.manifest import load_manifest
from nnsam2_utils.errors import ManifestError

GOOD = {
    "name": "my_ct",
    "modality": "CT",
    "sequence": "CT",
    "root": "data",
    "label_map": {1: 1, 2: 2},
    "cases": [{"id": "a01", "image": "a01.nii.gz", "label": "a01_seg.nii.gz", "discs": {"L3L4": 30, "L5S1": 5}}],
}


def write(tmp_path, data, name="m.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_manifest_resolves_paths_relative_to_the_yaml(tmp_path):
    manifest = load_manifest(write(tmp_path, GOOD))
    assert manifest.name == "my_ct"
    assert manifest.resolve("a01.nii.gz") == (tmp_path / "data" / "a01.nii.gz").resolve()
    assert manifest.case("a01").discs.L4L5 is None


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["cases"][0].update(discs={"L3L4": "top", "L5S1": 5}), "L3L4"),
        (lambda d: d["cases"].append(dict(d["cases"][0])), "duplicate case ids"),
        (lambda d: d.update(modality="PET"), "modality"),
        (lambda d: d.update(label_map={1: 7}), "label_map"),
        (lambda d: d["cases"][0]["discs"].update(L5S1=30), "same"),
        (lambda d: d.update(cases=[]), "cases"),
        (lambda d: d.update(label_map={1: 1, 2: 1}), "maps no value to 2 (left LPM)"),
        (
            lambda d: d.update(
                label_map={1: 1, 2: 1, 3: 2, 4: 2}, muscle_map={1: "R-ES", 2: "R-MF", 3: "R-MF", 4: "L-ES"}
            ),
            "muscle_map says label value 3 is R-MF (right), but label_map maps it to 2",
        ),
        (lambda d: d.update(other_labels="ignore"), "other_labels"),
    ],
)
def test_bad_manifests_name_the_file_and_the_field(tmp_path, mutate, expected):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_and_unparsable_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(bad)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ManifestError):
        load_manifest(path)


def test_path_escaping_the_data_root_is_refused(tmp_path):
    manifest = load_manifest(write(tmp_path, GOOD))
    with pytest.raises(ManifestError, match="escapes the data root"):
        manifest.resolve("../../etc/passwd")


def test_other_labels_background_maps_every_unlisted_value_to_background():
    import numpy as np

    from nnsam2_utils.data.labels import map_labels
    from nnsam2_utils.errors import DataError

    whole_body = np.array([0, 5, 5, 7, 9, 31])  # e.g. a TotalSegmentator file: 5 and 7 the LPM, the rest other organs
    with pytest.raises(DataError, match=r"label values \[9, 31\] are not in the manifest's label_map"):
        map_labels(whole_body, {5: 1, 7: 2}, "seg.nii.gz")
    assert map_labels(whole_body, {5: 1, 7: 2}, "seg.nii.gz", "background").tolist() == [0, 1, 1, 2, 0, 0]
