"""What a run profile needs before it starts: its manifests' data and the checkpoints it names."""

from __future__ import annotations

from nnsam2_utils.data.checks import check_manifest
from nnsam2_utils.errors import CheckpointError
from nnsam2_utils.workflow.profile import RunProfile, load_profile
from nnsam2_utils.workflow.workspace import repo_root


def checkpoint_problems(profile: str, loaded: RunProfile | None = None, checksums: bool = True) -> list[str]:
    """The SAM2 checkpoint of a profile that asks for SAM2 (as its backend or a compared one), checked as the run
    reads it (``${VAR}`` and ``~`` expanded, relative to the project folder): set, present and, with ``checksums``,
    matching its pinned SHA-256. One ``[checkpoint]`` line per problem; empty when it is ready or not needed."""
    settings = (loaded or load_profile(profile)).propagation
    if settings.backend != "sam2" and "sam2" not in settings.compare_backends:
        return []
    from nnsam2_utils.data.checkpoints import expand_path, verify_checkpoint
    from nnsam2_utils.propagate.sam2 import download_hint

    if not settings.sam2_checkpoint:
        return [
            f"[checkpoint] run profile '{profile}': propagation.sam2_checkpoint is not set. Fix: "
            "download the SAM2.1 checkpoint named by propagation.sam2_config and set its path."
        ]
    try:
        path = expand_path(settings.sam2_checkpoint, repo_root(), "propagation.sam2_checkpoint")
        verify_checkpoint(path, settings.sam2_sha256 if checksums else None, download_hint(settings.sam2_config))
    except CheckpointError as exc:
        return [f"[checkpoint] {exc}"]
    return []


def missing_for_profile(profile: str) -> list[str]:
    """What a run profile needs and does not have: its manifests' data (presence only, no image read)
    and the SAM2 checkpoint when it asks for SAM2 (as its backend or a compared one). Empty: ready to start."""
    loaded = load_profile(profile)
    missing: list[str] = []
    for path in loaded.manifest_paths():
        missing += [str(p) for p in check_manifest(path, checksums=False, read=False)]
    return missing + checkpoint_problems(profile, loaded)
