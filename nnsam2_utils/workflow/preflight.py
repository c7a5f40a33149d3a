"""What a run profile needs before it starts: its manifests' data and the checkpoints it names."""

from __future__ import annotations

from nnsam2_utils.data.checks import check_manifest
from nnsam2_utils.errors import CheckpointError
from nnsam2_utils.workflow.profile import load_profile
from nnsam2_utils.workflow.workspace import repo_root


def missing_for_profile(profile: str) -> list[str]:
    """What a run profile needs and does not have: its manifests' data (presence only, no image read)
    and the SAM2 checkpoint when it asks for SAM2 (as its backend or a compared one). Empty: ready to start."""
    loaded = load_profile(profile)
    missing: list[str] = []
    for path in loaded.manifest_paths():
        missing += [str(p) for p in check_manifest(path, checksums=False, read=False)]
    settings = loaded.propagation
    if settings.backend == "sam2" or "sam2" in settings.compare_backends:
        from nnsam2_utils.data.checkpoints import expand_path, verify_checkpoint
        from nnsam2_utils.propagate.sam2 import download_hint

        if not settings.sam2_checkpoint:
            missing.append(
                f"[checkpoint] run profile '{profile}': propagation.sam2_checkpoint is not set. Fix: "
                "download the SAM2.1 checkpoint named by propagation.sam2_config and set its path."
            )
        else:
            try:
                path = expand_path(settings.sam2_checkpoint, repo_root(), "propagation.sam2_checkpoint")
                verify_checkpoint(path, settings.sam2_sha256, download_hint(settings.sam2_config))
            except CheckpointError as exc:
                missing.append(f"[checkpoint] {exc}")
    return missing
