"""What a run profile needs before it starts: its manifests' data and the checkpoints it names.
"""
from __future__ import annotations

import os
from pathlib import Path

from nnsam2_utils.data.checks import check_manifest


def missing_for_profile(profile: str) -> list[str]:
    """What a run profile needs and does not have: its manifests' data (presence only, no image read)
    and the SAM2 checkpoint when it asks for SAM2 (as its backend or a compared one). Empty: ready to start."""
    from nnsam2_utils.workflow.profile import load_profile
    from nnsam2_utils.workflow.workspace import repo_root

    root = repo_root()
    data = load_profile(profile)
    missing: list[str] = []
    for entry in data.get("manifests") or []:
        path = Path(entry) if Path(entry).is_absolute() else root / entry
        missing += [str(p) for p in check_manifest(path, checksums=False, read=False)]
    settings = data.get("propagation") or {}
    if settings.get("backend") == "sam2" or "sam2" in (settings.get("compare_backends") or []):
        from nnsam2_utils.data.checkpoints import verify_checkpoint
        from nnsam2_utils.errors import CheckpointError

        checkpoint = settings.get("sam2_checkpoint")
        if not checkpoint:
            missing.append(f"[checkpoint] run profile '{profile}': propagation.sam2_checkpoint is not set. Fix: download the "
                           "SAM2.1 checkpoint named by propagation.sam2_config and set its path.")
        else:
            from nnsam2_utils.propagate.sam2 import download_hint

            path = Path(os.path.expandvars(str(checkpoint))).expanduser()
            path = path if path.is_absolute() else root / path
            config = settings.get("sam2_config", "configs/sam2.1/sam2.1_hiera_l.yaml")
            try:
                verify_checkpoint(path, settings.get("sam2_sha256"), download_hint(config))
            except CheckpointError as exc:
                missing.append(f"[checkpoint] {exc}")
    return missing
