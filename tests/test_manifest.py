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


@pytest.mark.parametrize(
    "where, pattern, named",
    [
        ("cases_csv", "{case}.nii.gz", "{case}"),
        ("cases_csv", "{id}/{ID}_seg.nii.gz", "{ID}"),
        ("cases_csv", "{}.nii.gz", "{}"),
        ("cases_csv", "{id:>5}.nii.gz", "{id}"),
        ("external", "ts/{case_id}.nii.gz", "{case_id}"),
    ],
)
def test_an_unknown_path_placeholder_is_named_when_the_manifest_is_loaded(tmp_path, where, pattern, named):
    """A path pattern with a placeholder other than {id} (it was a KeyError traceback at the first scan's path)."""
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    if where == "cases_csv":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "cases.csv").write_text("id,L3L4,L5S1\nb02,30,5\n", encoding="utf-8")
        data["cases_csv"] = {"file": "cases.csv", "image": "{id}.nii.gz", "label": pattern}
        field = "cases_csv.label"
    else:
        data["external"] = [{"name": "TotalSegmentator", "pattern": pattern, "label_map": {1: 1, 2: 2}}]
        field = "external.0.pattern"
    path = write(tmp_path, data)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cases_csv=False)  # before any CSV row is read
    message = str(info.value)
    assert str(path) in message and field in message, message
    assert f"unknown placeholder(s) {named}" in message and "placeholders allowed: {id}" in message, message


def test_an_unbalanced_brace_in_a_path_pattern_is_named(tmp_path):
    data = {**GOOD, "external": [{"name": "ts", "pattern": "ts/{id.nii.gz", "label_map": {1: 1, 2: 2}}]}
    path = write(tmp_path, data)
    with pytest.raises(
        ManifestError, match=r"external\.0\.pattern: .*not a valid pattern.*placeholders allowed: \{id\}"
    ):
        load_manifest(path)


def test_known_path_placeholders_build_each_scans_paths(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cases.csv").write_text("id,L3L4,L5S1\nb02,30,5\n", encoding="utf-8")
    data = {**GOOD, "cases_csv": {"file": "cases.csv", "image": "{id}/img.nii.gz", "label": "{{raw}}/{id}_seg.nii"}}
    manifest = load_manifest(write(tmp_path, data))
    assert (manifest.case("b02").image, manifest.case("b02").label) == ("b02/img.nii.gz", "{raw}/b02_seg.nii")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "0", "-3.0"])
def test_decimate_to_mm_must_be_a_positive_finite_thickness(tmp_path, value):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(GOOD) + f"decimate_to_mm: {value}\n", encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert str(path) in message and "decimate_to_mm: " in message, message
    assert "must be a slice thickness in mm above 0" in message and "left out for no decimation" in message, message


def test_decimate_to_mm_accepts_a_thickness_and_none(tmp_path):
    assert load_manifest(write(tmp_path, {**GOOD, "decimate_to_mm": 3.0})).decimate_to_mm == 3.0
    assert load_manifest(write(tmp_path, {**GOOD, "decimate_to_mm": None}, "n.yaml")).decimate_to_mm is None
