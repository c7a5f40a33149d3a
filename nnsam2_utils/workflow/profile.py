"""Run profiles (``config/<profile>.yaml``): typed, validated once, used by the CLI, the Snakefile and the notebooks.

Every key of a profile is a field below; an unknown or mistyped key is a :class:`ConfigError` that names
the file and the key. docs/method.md names, for each step, the keys that set it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from nnsam2_utils.data.io import read_yaml
from nnsam2_utils.errors import ConfigError, validation_problems
from nnsam2_utils.workflow.workspace import repo_root

PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cohort(_Section):
    """The synthetic demo cohort (``generate: false`` for real data only).

    ``own_scans_example``: the book's example chapter "Use it on your own scans" (example scans generated and run
    through stage 0, about 25 s); unset (null): on when the demo cohort is generated, off for a run of your own data.
    """

    generate: bool = False
    size: Literal["default", "tiny"] = "default"
    datasets: list[str] = Field(default_factory=list)
    own_scans_example: bool | None = None


class Propagation(_Section):
    """Stage 0 (docs/method.md §4): the promptable model and where it runs."""

    backend: Literal["litemedsam", "sam2"] = "litemedsam"
    device: str = "cpu"
    # LiteMedSAM's image encoder: eager torch, or exported to OpenVINO (exact fp32, built once and cached under
    # work/_models with the weights' SHA-256); bf16 only on CPUs with native bf16 (docs/method.md §4.1)
    encoder: Literal["torch", "openvino", "openvino-bf16"] = "torch"
    # its prompt encoder and mask decoder: eager torch, or exported to OpenVINO (fp32, the same cache; on the CPU)
    decoder: Literal["torch", "openvino"] = "torch"
    sam2_config: str = "configs/sam2.1/sam2.1_hiera_l.yaml"
    sam2_checkpoint: str | None = None
    sam2_sha256: str | None = None
    sam2_image_size: int | None = None
    compare_backends: list[Literal["litemedsam", "sam2"]] = Field(default_factory=list)


class StageOverrides(_Section):
    """Per-stage values over the ``refine`` section (budget) and the stage-2/3 filter rules (docs/method.md §5.2)."""

    epochs: int | None = None
    iterations_per_epoch: int | None = None
    batch_size: int | None = None
    min_agreement: float | None = None
    max_growth: float | None = None
    fraction: float | None = None
    min_scans: int | None = None


class Refine(_Section):
    """Stages 1-3 (docs/method.md §5): filters and the nnU-Net budget."""

    stages: int = Field(3, ge=1, le=3)
    configuration: Literal["2d", "3d_fullres"] = "2d"
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations: int | None = None
    batch_size: int | None = None
    max_features: int | None = None
    target_spacing_mm: float | None = None
    rotation_deg: float | None = None
    warm_start: bool = False
    device: str = "cpu"
    augmentation_workers: int | None = None  # 0: augmentation in the training process (deterministic)
    threads: int | None = Field(None, ge=1)  # CPU threads per training job; None: every core Snakemake has
    # fp32 | bf16 (forward pass under bf16 autocast; a CPU with native bf16 only) | auto (bf16 where the CPU has it)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    confidence_percentile: float = Field(90.0, gt=0, lt=100)
    slice_fraction: float = Field(0.02, gt=0, le=1)
    min_slices_per_scan: int = Field(0, ge=0)  # stage-1 floor per scan (0: the paper's filter alone)
    sparse_mode: Literal["slices", "ignore_label"] = "slices"
    stage1: StageOverrides | None = None
    stage2: StageOverrides | None = None
    stage3: StageOverrides | None = None


class Deliver(_Section):
    """Which stage's labels the run delivers per dataset (docs/method.md §7.1)."""

    rule: str = Field("evidence", pattern=r"^(evidence|final|stage0|nnunet[1-3])$")  # final: the paper's last nnU-Net
    min_confident_agreement: float = Field(0.85, ge=0, le=1)  # below: flagged (DSC with stage 0 where confident)
    min_annotated_dsc: float = Field(0.7, ge=0, le=1)  # DSC on the annotated slice, never trained on
    confident_quantile: float = Field(0.5, ge=0, lt=1)  # stage-0 slices at or above this quantile are confident
    review_slices: int = Field(10, ge=0)  # slices per dataset in the review list


class Baselines(_Section):
    """Which comparisons run beside nnsam2 (docs/method.md §10)."""

    supervised: bool = False
    # the supervised bound by k-fold cross-validation over subjects (§10.1): each scan scored by a model that saw
    # neither it nor its subject's other scans; 1: trained and scored on the same scans (optimistic)
    supervised_folds: int = Field(2, ge=1, le=10)
    # split: the folds share one training's budget (refine.epochs / folds each, the CPU demo); per_fold: each fold
    # trains for the whole refine budget (the paper profile)
    supervised_budget: Literal["split", "per_fold"] = "split"
    oneshot: bool = False
    repeat: bool = False
    which_slice: bool = False  # the "Which slice to annotate" chapter (§10.6): its own page, not a 05_ baseline page
    # epochs of the nnU-Net each of the chapter's variants trains (nnU-Net 1's budget otherwise); 0: stage 0 alone
    which_slice_epochs: int = Field(0, ge=0)
    which_slice_batch_size: int | None = Field(None, ge=1)  # their batch size (None: refine.batch_size)


#: The baselines with a page of their own (05_<name>), in the book's order; the other ``baselines`` keys are settings.
BASELINE_PAGES: tuple[str, ...] = ("supervised", "oneshot", "repeat")


class Resources(_Section):
    """A step's memory (MB) and runtime (minutes) on a cluster."""

    mem_mb: int | None = None
    runtime: int | None = None


class RunProfile(_Section):
    """One run profile: what data, which model, which budget."""

    profile: str = Field(pattern=PROFILE_NAME)
    seed: int = 0
    cohort: Cohort = Field(default_factory=Cohort)
    manifests: list[str] = Field(default_factory=list)
    propagation: Propagation = Field(default_factory=Propagation)
    refine: Refine = Field(default_factory=Refine)
    baselines: Baselines = Field(default_factory=Baselines)
    deliver: Deliver = Field(default_factory=Deliver)
    resources: dict[str, Resources] = Field(default_factory=dict)

    @field_validator("manifests", "cohort", "propagation", "refine", "baselines", "deliver", "resources", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any, info: ValidationInfo) -> Any:
        """An empty YAML key (``manifests:``) means the default, not an error."""
        if value is None:
            return [] if info.field_name == "manifests" else {}
        return value

    def section(self, name: str) -> dict[str, Any]:
        """A section as a plain dict without unset values (run keys, nnU-Net budgets)."""
        return getattr(self, name).model_dump(exclude_none=True)

    @property
    def generated_datasets(self) -> list[str]:
        """The demo datasets this profile generates (none when ``cohort.generate`` is off)."""
        return list(self.cohort.datasets) if self.cohort.generate else []

    @property
    def own_scans_example(self) -> bool:
        """Whether the run makes the example own-scans chapter (``cohort.own_scans_example``; unset: with the demo)."""
        chosen = self.cohort.own_scans_example
        return self.cohort.generate if chosen is None else chosen

    @property
    def enabled_baselines(self) -> list[str]:
        return [name for name in BASELINE_PAGES if getattr(self.baselines, name)]

    @property
    def compared_backends(self) -> list[str]:
        """Backends run for stage 0 alone beside the profile's own (results-table rows)."""
        return [b for b in self.propagation.compare_backends if b != self.propagation.backend]

    def manifest_paths(self, root: str | Path | None = None) -> list[Path]:
        """The profile's own dataset manifests, relative paths resolved against the project folder."""
        base = repo_root(root)
        return [Path(e) if Path(e).is_absolute() else base / e for e in self.manifests]


def config_dir(root: str | Path | None = None) -> Path:
    """Where run profiles are read from: ``$NNSAM2_CONFIG_DIR`` if set, else ``<project>/config``.

    The variable lets a test (or a reader) run another profile file under a profile's name,
    e.g. the tiny cohort as ``demo``, without touching ``config/``; the Snakefile honours it too.
    """
    folder = os.environ.get("NNSAM2_CONFIG_DIR")
    return Path(folder).resolve() if folder else repo_root(root) / "config"


def profile_path(profile: str | Path, root: str | Path | None = None) -> Path:
    """The file of a run profile given by name (``<config dir>/<name>.yaml``) or by path."""
    path = Path(profile)
    return path if path.suffix else config_dir(root) / f"{profile}.yaml"


def load_profile(profile: str | Path, root: str | Path | None = None) -> RunProfile:
    """Load and validate a run profile by name (``<config dir>/<name>.yaml``) or by path."""
    path = profile_path(profile, root)
    if not path.is_file():
        known = sorted(p.stem for p in config_dir(root).glob("*.yaml"))
        where = " (NNSAM2_CONFIG_DIR is set)" if os.environ.get("NNSAM2_CONFIG_DIR") else ""
        raise ConfigError(f"{path}: run profile not found{where}. Known profiles: {known}.")
    data = read_yaml(path, ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a run profile must be a mapping of keys (profile, seed, cohort, ...).")
    try:
        loaded = RunProfile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"{path}: invalid run profile: {validation_problems(exc)}. Each key and its type: "
            "nnsam2_utils/workflow/profile.py, class RunProfile."
        ) from exc
    if not Path(profile).suffix and loaded.profile != Path(profile).name:
        raise ConfigError(
            f"{path}: its 'profile:' key says '{loaded.profile}' but the file is named for "
            f"'{Path(profile).name}'. Make them the same (the work folder is work/<profile>)."
        )
    return loaded
