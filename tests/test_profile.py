"""The typed run profile: read once, every key checked, errors name the file and the key."""

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nnsam2_utils.errors import ConfigError
from nnsam2_utils.workflow.book_toc import page_names, toc_for_pages, write_toc
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


# --- a run of your own data alone: the example chapter and the book's toc ------------------------------------------


def test_the_example_own_scans_chapter_is_off_for_your_own_data_and_switchable(config_dir):
    shipped = ROOT / "config"
    assert (
        load_profile(shipped / "demo.yaml").own_scans_example
        and not load_profile(shipped / "paper.yaml").own_scans_example
    )
    write(config_dir, "mine", {"profile": "mine", "cohort": {"generate": False, "datasets": []}})
    assert load_profile("mine").own_scans_example is False
    write(config_dir, "mine", {"profile": "mine", "cohort": {"generate": False, "own_scans_example": True}})
    assert load_profile("mine").own_scans_example is True
    write(config_dir, "mine", {"profile": "mine", "cohort": {"generate": True, "own_scans_example": False}})
    assert load_profile("mine").own_scans_example is False
    write(config_dir, "mine", {"profile": "mine", "cohort": {"own_scans_example": "maybe"}})
    with pytest.raises(ConfigError, match=r"mine\.yaml: invalid run profile: cohort\.own_scans_example: Input should"):
        load_profile("mine")


ROOT = Path(__file__).resolve().parents[1]


def test_a_profiles_toc_lists_only_the_pages_it_makes(tmp_path):
    """Own data alone, baselines off: no Baselines part, no example chapter; every entry left names a page made."""
    pages = {"generated/00_cohort", "generated/04_results", "generated/06_agreement", "generated/07_teaching"}
    pages |= {"generated/08_run_record", "generated/01_prepare_clinic", "generated/02_stage0_clinic"}
    pages |= {f"generated/03_refine_{k}" for k in (1, 2, 3)}
    target = write_toc(ROOT / "book" / "_toc.yml", tmp_path / "_toc.yml", pages)
    toc = yaml.safe_load(target.read_text(encoding="utf-8"))
    assert [part["caption"] for part in toc["parts"]] == [
        "The paper",
        "Teaching",
        "Stage by stage (executed notebooks of this run)",
    ]
    stages = toc["parts"][2]["chapters"][1]
    assert stages == {
        "file": "stages",
        "sections": [
            {"glob": "generated/01_prepare_*"},
            {"glob": "generated/02_stage0_*"},
            {"glob": "generated/03_refine_*"},
        ],
    }
    for entry in (e for part in toc["parts"] for c in part["chapters"] for e in [c, *c.get("sections", [])]):
        if "glob" in entry:
            assert any(fnmatch.fnmatchcase(page, entry["glob"]) for page in pages), entry
        elif entry["file"].startswith("generated/"):
            assert entry["file"] in pages, entry


def test_the_demo_pages_keep_the_whole_toc():
    full = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text(encoding="utf-8"))
    pages = {"generated/00_cohort", "generated/04_results", "generated/06_agreement", "generated/07_teaching"}
    pages |= {"generated/08_run_record", "generated/09_own_scans", "generated/05_oneshot", "generated/01_prepare_a"}
    pages |= {"generated/02_stage0_a", "generated/03_refine_1"}
    assert toc_for_pages(full, pages) == full
    assert page_names(["book/generated/05_repeat.ipynb"], "book") == {"generated/05_repeat"}


def test_a_dry_run_of_your_own_data_alone_makes_no_example_chapter(config_dir, tmp_path):
    """The Snakefile reads the switch: no own_scans job and no baseline job for an own-data profile."""
    manifest = tmp_path / "clinic.yaml"
    case = {"id": "p1", "image": "p1.nii.gz", "label": "p1_seg.nii.gz", "discs": {"L3L4": 12, "L5S1": "edge"}}
    manifest.write_text(
        yaml.safe_dump({"name": "clinic", "modality": "MRI", "sequence": "T2w", "root": "data", "cases": [case]})
    )
    profile = {
        "profile": "mine",
        "cohort": {"generate": False, "datasets": []},
        "manifests": [str(manifest)],
        "baselines": {"supervised": False, "oneshot": False, "repeat": False, "which_slice": False},
    }
    write(config_dir, "mine", profile)
    env = dict(os.environ, NNSAM2_CONFIG_DIR=str(config_dir), NNSAM2_WORK=str(tmp_path / "work"))
    env.pop("NNSAM2_BOOK", None)
    command = [str(Path(sys.executable).parent / "snakemake"), "-n", "--config", "profile=mine", "--", "book"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE))
    assert jobs == {
        "book_sources": "1",
        "cohort": "1",
        "encoder": "1",
        "prepare": "1",
        "stage0": "1",
        "refine": "3",
        "results": "1",
        "agreement": "1",
        "teaching": "1",
        "run_record": "1",
        "book": "1",
        "total": "13",
    }


def test_every_shell_command_of_the_workflow_quotes_its_paths_and_names(tmp_path):
    """The Snakefile's shell commands, as Snakemake formats them (a dry run printing them) with a work folder whose
    name a shell would split or expand: every path arrives as one argument, every name as itself."""
    work = tmp_path / "work dir $HOME 'x'"
    env = dict(os.environ, NNSAM2_WORK=str(work))
    for name in ("NNSAM2_CONFIG_DIR", "NNSAM2_BOOK"):
        env.pop(name, None)
    snakemake = str(Path(sys.executable).parent / "snakemake")
    command = [snakemake, "-n", "-p", "--forceall", "--config", "profile=tiny", "--", "book"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shells = [s for s in re.findall(r"^Shell command: (.*)$", result.stdout, flags=re.MULTILINE) if s != "None"]
    assert len(shells) >= 15, result.stdout[-3000:]  # (None: the run: block of book_sources, no shell)
    book = work / "tiny" / "book"
    datasets = set(load_profile("tiny").generated_datasets)
    pages = per_dataset = 0
    for shell in shells:
        words = shlex.split(shell)  # what the shell hands the program, $HOME not expanded
        assert not [w for w in words if "{" in w or "}" in w], shell  # no placeholder left unformatted
        if "execute" in words:
            at, parameters = words.index("execute") + 1, {}
            while words[at] == "-p":
                parameters[words[at + 1]] = words[at + 2]
                at += 3
            notebook, page = words[at:]
            assert Path(page).parent == book / "generated" and page.endswith(".ipynb"), shell
            assert (ROOT / notebook).is_file(), shell
            assert parameters.pop("profile") == "tiny", shell
            assert set(parameters) <= {"dataset", "stage", "backend"}, shell
            assert parameters.get("dataset", next(iter(datasets))) in datasets, shell
            pages += 1
            per_dataset += "dataset" in parameters
        elif "build" in words:
            assert words[words.index("build") + 1 :] == [str(book), "--quiet", "--keep-going", "-W"], shell
        else:
            assert words[words.index("--profile") + 1] == "tiny", shell
            if "--dataset" in words:
                assert words[words.index("--dataset") + 1] in datasets, shell
    assert pages >= 10 and per_dataset >= 2 * len(datasets)
    # names that a rule takes from a wildcard are quoted too (the dataset names of a profile's own manifests)
    snakefile = (ROOT / "Snakefile").read_text(encoding="utf-8")
    wildcards = re.findall(r"\{+wildcards\.\w+(?::\w+)?\}+", snakefile)
    assert wildcards and all(w.rstrip("}").endswith(":q") for w in wildcards), wildcards
