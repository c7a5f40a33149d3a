"""The typed run profile: read once, every key checked, errors name the file and the key."""

import pytest
import yaml

from nnsam2_utils.errors import ConfigError
from nnsam2_utils.workflow.profile import RunProfile, load_profile
from nnsam2_utils.workflow.session import own_manifests


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(tmp_path))
    return tmp_path


def write(folder, name, data):
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)


def test_the_shipped_profiles_validate():
    demo, paper = load_profile("demo"), load_profile("paper")
    assert isinstance(demo, RunProfile) and demo.refine.stages == 3 and demo.propagation.backend == "litemedsam"
    assert demo.generated_datasets and not paper.generated_datasets and paper.refine.sparse_mode == "ignore_label"
    assert demo.section("refine")["stage2"] == {"epochs": 4}  # nested overrides survive, unset values do not


def test_an_unknown_key_is_named_with_its_file(config_dir):
    write(config_dir, "mine", {"profile": "mine", "refine": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"mine\.yaml: invalid run profile: refine\.epoch: Extra inputs"):
        load_profile("mine")


def test_a_wrong_type_is_named_with_its_file(config_dir):
    write(config_dir, "mine", {"profile": "mine", "propagation": {"backend": "medsam"}})
    with pytest.raises(ConfigError, match=r"mine\.yaml: invalid run profile: propagation\.backend: Input should be"):
        load_profile("mine")


def test_a_profile_naming_another_profile_is_refused(config_dir):
    write(config_dir, "mine", {"profile": "demo"})
    with pytest.raises(ConfigError, match=r"mine\.yaml: its 'profile:' key says 'demo'"):
        load_profile("mine")


def test_a_profile_name_with_a_space_is_refused(config_dir):
    write(config_dir, "my run", {"profile": "my run"})
    with pytest.raises(ConfigError, match=r"invalid run profile: profile: String should match pattern"):
        load_profile("my run")


def test_broken_yaml_is_a_message_not_a_traceback(config_dir):
    write(config_dir, "mine", "profile: mine\nrefine: [unclosed\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: not valid YAML"):
        load_profile("mine")


def test_empty_sections_mean_the_defaults(config_dir):
    write(config_dir, "mine", "profile: mine\nmanifests:\nbaselines:\n")
    loaded = load_profile("mine")
    assert loaded.manifests == [] and loaded.enabled_baselines == []


def test_two_manifests_with_one_name_are_refused(config_dir, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": "clinic",
                    "modality": "MRI",
                    "sequence": "T2w",
                    "root": ".",
                    "cases": [{"id": "c1", "image": "i.nii.gz", "discs": {"L3L4": 5, "L5S1": 1}}],
                }
            )
        )
    write(
        config_dir, "mine", {"profile": "mine", "manifests": [str(tmp_path / "a/m.yaml"), str(tmp_path / "b/m.yaml")]}
    )
    with pytest.raises(ConfigError, match=r"b/m\.yaml: dataset name 'clinic' is also the name of .*a/m\.yaml"):
        own_manifests(load_profile("mine"))
