"""The GPU check script runs its three checks end to end on the CPU (``--quick``), so it cannot rot.

Real code paths only: the shipped LiteMedSAM weights, SAM2 hiera-tiny with random weights, and a
tiny nnU-Net training and prediction with nnsam2's trainer. The CUDA run itself is in docs/gpu.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "outcomes.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("litemedsam", "sam2", "nnunet"):
        assert any(line.startswith(f"PASS {name}:") for line in lines), run.stdout[-3000:]
    assert lines[-1].startswith("SUMMARY: 3/3 checks passed on device cpu")
    outcomes = {o["name"]: o for o in json.loads(out.read_text(encoding="utf-8"))}
    assert outcomes["litemedsam"]["numbers"]["dsc_class1"] >= 0.99  # the same device twice agrees
    assert outcomes["sam2"]["numbers"]["masks"] == "(2, 256, 256)/uint8"
    assert outcomes["nnunet"]["numbers"]["epochs"] == 1 and outcomes["nnunet"]["numbers"]["it_per_s_last_epoch"] > 0


def test_gpu_check_refuses_missing_cuda_or_unknown_check():
    import torch

    bad = subprocess.run([sys.executable, str(SCRIPT), "--checks", "nosuch"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    if not torch.cuda.is_available():
        run = subprocess.run(
            [sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 1 and "FAIL setup: CUDA is not available" in run.stdout
