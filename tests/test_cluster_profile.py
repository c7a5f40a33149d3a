"""The SLURM profile: a dry run of the paper profile lists every job, GPU rules on the GPU partition."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def dry_run_jobs(profile: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job of a Snakemake dry run through cluster."""
    env = {**os.environ, "SLURM_ACCOUNT": "acct", "SLURM_PARTITION": "cpu", "SLURM_GPU_PARTITION": "gpu"}
    snakemake = Path(sys.executable).parent / "snakemake"
    result = subprocess.run(
        [str(snakemake), "-n", "--profile", "cluster", "--config", f"profile={profile}", "--forceall", "--", "book"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block.strip())
        res = re.search(r"resources: (.*)", block)
        if rule and res:
            jobs.append((rule.group(1), dict(kv.split("=", 1) for kv in res.group(1).split(", "))))
    return jobs


def test_paper_profile_dry_run_puts_gpu_rules_on_the_gpu_partition():
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text(encoding="utf-8"))
    jobs = dry_run_jobs("paper")
    count = lambda rule: sum(r == rule for r, _ in jobs)  # noqa: E731
    assert count("stage0") == len(paper["manifests"])
    assert count("stage0_compare") == len(paper["manifests"]) * len(paper["propagation"]["compare_backends"])
    assert count("refine") == paper["refine"]["stages"] == 3
    assert count("supervised") == 1 and count("book") == 1
    for rule, resources in jobs:
        gpu = rule in {
            "encoder",
            "stage0",
            "stage0_compare",
            "refine",
            "supervised",
            "own_scans_example",
            "new_subjects",
        }
        assert resources.get("gpu", "0") == ("1" if gpu else "0"), (rule, resources)
        assert resources["slurm_partition"] == ("gpu" if gpu else "cpu"), (rule, resources)
        assert resources["slurm_account"] == "acct"
    refine = dict(jobs)["refine"]
    assert int(refine["mem_mb"]) == paper["resources"]["refine"]["mem_mb"]
    assert int(refine["runtime"]) == paper["resources"]["refine"]["runtime"]


def test_demo_profile_asks_for_no_gpu():
    assert all(resources.get("gpu", "0") == "0" for _, resources in dry_run_jobs("demo"))


def test_a_compared_sam2_backend_without_its_checkpoint_is_named_before_the_run(tmp_path, monkeypatch):
    from nnsam2_utils.workflow.preflight import missing_for_profile

    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    assert not missing_for_profile("demo")
    demo["propagation"]["compare_backends"] = ["sam2"]
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo))
    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(tmp_path))
    missing = missing_for_profile("demo")
    assert len(missing) == 1 and "propagation.sam2_checkpoint is not set" in missing[0]


def test_a_checkpoint_path_with_an_unset_variable_is_named_by_the_start_check_and_stage0_alike(tmp_path, monkeypatch):
    """`${VAR}` in a checkpoint path: the start check and stage 0 expand it the same way, and an unset
    variable is named by both (it used to pass the start check and fail in stage 0)."""
    from nnsam2_utils.data.io import sha256
    from nnsam2_utils.errors import CheckpointError
    from nnsam2_utils.propagate import make_propagator
    from nnsam2_utils.workflow.preflight import missing_for_profile

    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    demo["propagation"]["compare_backends"] = ["sam2"]
    demo["propagation"]["sam2_checkpoint"] = "${NNSAM2_TEST_MODELS}/sam2.pt"
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo), encoding="utf-8")
    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("NNSAM2_TEST_MODELS", raising=False)
    missing = missing_for_profile("demo")
    assert len(missing) == 1 and "environment variable NNSAM2_TEST_MODELS is not set" in missing[0]
    settings = {**demo["propagation"], "backend": "sam2"}
    with pytest.raises(CheckpointError, match="NNSAM2_TEST_MODELS is not set"):
        make_propagator(settings)
    models = tmp_path / "models"
    models.mkdir()
    (models / "sam2.pt").write_bytes(b"not a real checkpoint")
    monkeypatch.setenv("NNSAM2_TEST_MODELS", str(models))
    demo["propagation"]["sam2_sha256"] = "0" * 64
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo), encoding="utf-8")
    missing = missing_for_profile("demo")  # found through the variable; its digest is checked
    assert len(missing) == 1 and str(models / "sam2.pt") in missing[0] and "SHA-256 mismatch" in missing[0]
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        make_propagator(
            {**settings, "sam2_checkpoint": demo["propagation"]["sam2_checkpoint"], "sam2_sha256": "0" * 64}
        )
    assert sha256(models / "sam2.pt")  # the file was only read
