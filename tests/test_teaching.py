"""The teaching chapter's computed parts (nnsam2_utils.report.teaching): the rescued / not rescued pair and its
sentence follow the numbers, the stage trend of one scan, and the exercises' commands, run with sed on the project's
real profiles, give profiles that load with the knob turned and nothing else changed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from nnsam2_utils.report import teaching
from nnsam2_utils.workflow.profile import load_profile
from nnsam2_utils.workflow.workspace import repo_root

CONFIG = repo_root() / "config"


def dsc_table(scans: dict[tuple[str, str], tuple[float, float]], final: str = "nnunet3") -> pd.DataFrame:
    """Long DSC rows (both classes equal) from (dataset, case) → (stage-0 DSC, final DSC)."""
    rows = []
    for (dataset, case), (first, last) in scans.items():
        for stage, value in (("stage0", first), (final, last)):
            rows += [{"dataset": dataset, "case": case, "class": c, "stage": stage, "dsc": value} for c in (1, 2)]
    return pd.DataFrame(rows)


def test_the_pair_and_its_sentence_follow_the_numbers() -> None:
    dsc = dsc_table(
        {("ct", "a"): (0.30, 0.90), ("ct", "b"): (0.80, 0.85), ("mr", "c"): (0.95, 0.70), ("mr", "ref"): (0.99, 0.60)}
    )
    gains = teaching.stage_gains(dsc, "nnunet3")
    assert gains["gain"].round(2).tolist() == [-0.39, -0.25, 0.05, 0.60]
    best, worst = teaching.rescue_pair(gains, {"mr": "ref"})
    assert (best["case"], worst["case"]) == ("a", "c"), "the reference scan is left out while two others remain"
    text = teaching.rescue_sentence(best, worst, "nnU-Net 3", {"mr": "ref"})
    assert text.startswith("Refinement rescues scan a of ct: stage 0 0.300 → nnU-Net 3 0.900 (+0.600).")
    assert "which it makes worse: stage 0 0.950 → nnU-Net 3 0.700 (-0.250)" in text
    assert "reference scans are left out" in text
    assert teaching.pair_tags(best, worst) == ("rescued", "made worse")
    # with the reference scan in the choice, it is the one made worst, and named as the reference
    best, worst = teaching.rescue_pair(gains)
    assert worst["case"] == "ref"
    assert "its dataset's reference scan" in teaching.rescue_sentence(best, worst, "nnU-Net 3", {"mr": "ref"})


def test_no_rescue_is_said_so() -> None:
    dsc = dsc_table({("ct", "a"): (0.90, 0.92), ("ct", "b"): (0.80, 0.81), ("ct", "c"): (0.85, 0.86)})
    best, worst = teaching.rescue_pair(teaching.stage_gains(dsc, "nnunet3"))
    text = teaching.rescue_sentence(best, worst, "nnU-Net 3", {})
    assert text.startswith("No scan of this run is rescued: the largest gain of nnU-Net 3 over stage 0, on scan a")
    assert "It helps scan b of ct least: stage 0 0.800 → nnU-Net 3 0.810 (+0.010)." in text
    assert teaching.pair_tags(best, worst) == ("largest gain", "smallest gain")
    with pytest.raises(ValueError, match="at least two scans"):
        teaching.rescue_pair(teaching.stage_gains(dsc_table({("ct", "a"): (0.9, 0.9)}), "nnunet3"))


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ([0.96, 0.93, 0.92], "every stage after stage 0 scores lower on this scan"),
        ([0.50, 0.80, 0.90], "every stage improves on the one before"),
        ([0.50, 0.90, 0.85], "its best stage is nnU-Net 1"),
    ],
)
def test_trend_sentence(values, words) -> None:
    table = pd.DataFrame({1: values, 2: values}, index=["stage0", "nnunet1", "nnunet2"])
    text = teaching.trend_sentence(table)
    assert words in text and " → ".join(f"{v:.3f}" for v in values) in text


def run_commands(command: str, folder: Path) -> str:
    """Run an exercise's ``sed`` line in ``folder`` (with a copy of config/); returns the new profile's name."""
    *sed, make = command.splitlines()
    subprocess.run("\n".join(sed), shell=True, check=True, cwd=folder, executable="/bin/bash")
    return re.fullmatch(r"make book PROFILE=(\w+)", make).group(1)


@pytest.mark.parametrize("profile", ["demo", "paper", "tiny"])
def test_each_exercise_command_turns_its_knob_and_nothing_else(profile, tmp_path, monkeypatch) -> None:
    shutil.copytree(CONFIG, tmp_path / "config")
    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(tmp_path / "config"))
    original = load_profile(profile)
    text = (tmp_path / "config" / f"{profile}.yaml").read_text(encoding="utf-8")
    confidence = pd.DataFrame(
        [
            {"dataset": "d", "case": f"c{i}", "slice": k, "class": c, "iou": 0.5 + 0.01 * (i + k), "prompted": False}
            for i in range(3)
            for k in range(6)
            for c in (1, 2)
        ]
    )
    dsc = dsc_table({("d", "c0"): (0.5, 0.8)}).assign(stage=lambda t: t["stage"].replace({"nnunet3": "nnunet1"}))
    markdown = teaching.exercises(SimpleNamespace(profile=original, name=profile), text, confidence, dsc, 30.0)
    blocks = re.findall(r"```bash\n(.*?)\n```", markdown, re.DOTALL)
    keys = re.findall(r"^### \d\. [^`]+`refine\.(\w+)`", markdown, re.MULTILINE)
    assert keys == ["confidence_percentile", "stages", "rotation_deg", "warm_start"] and len(blocks) == 4
    for key, block in zip(keys, blocks):
        if block.startswith("cp "):  # the profile leaves the key at its default: said in words
            assert getattr(original.refine, key) is None or key not in text, block
            continue
        name = run_commands(block, tmp_path)
        changed = load_profile(name)
        assert changed.profile == name
        before, after = original.model_dump(), changed.model_dump()
        assert after["refine"][key] != before["refine"][key], (key, block)
        after["refine"][key], after["profile"] = before["refine"][key], before["profile"]
        assert after == before, f"{block} changed more than {key}"
    assert "took 30 min in all" in markdown and "None" not in markdown


def test_run_minutes_adds_the_steps() -> None:
    records = [{"seconds": 90.0}, {"seconds": 30}, {"seconds": None}]
    assert teaching.run_minutes(records) == 2.0


def test_a_key_missing_from_the_profile_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="config/x.yaml has no line 'rotation_deg: <value>' under 'refine:'"):
        teaching.profile_edit_command("x", "refine:\n  stages: 3\n", "refine.rotation_deg", 180, "y")
    # a key of the same name in another section is not it
    with pytest.raises(ValueError):
        teaching.profile_edit_command("x", "deliver:\n  stages: 3\nrefine:\n  epochs: 2\n", "refine.stages", 1, "y")


def test_kept_frames_fall_as_the_percentile_rises() -> None:
    confidence = pd.DataFrame(
        [
            {
                "dataset": "d",
                "case": f"c{i}",
                "slice": k,
                "class": c,
                "iou": 0.3 + 0.02 * i + 0.03 * k,
                "prompted": False,
            }
            for i in range(60)
            for k in range(5)
            for c in (1, 2)
        ]
    )
    counts = [teaching.kept_frames(confidence, p, 1.0, 0) for p in (50, 90, 99)]
    assert counts[0] > counts[1] > counts[2] >= 1
    # with the paper's 2 % per slice position, each of the 5 positions keeps its one most confident frame
    assert teaching.kept_frames(confidence, 50, 0.02, 0) == 5
