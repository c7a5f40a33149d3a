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
