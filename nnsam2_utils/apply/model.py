"""The trained nnU-Net of a run (docs/method.md §13): which stage, where its checkpoint is, and its SHA-256 as
recorded when it was trained (a checkpoint changed since is refused, never loaded)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nnsam2_utils.errors import CheckpointError, ConfigError
from nnsam2_utils.workflow.profile import RunProfile, load_profile, profile_path
from nnsam2_utils.workflow.workspace import Workspace

if TYPE_CHECKING:  # pragma: no cover
    from nnsam2_utils.refine.nnunet import Budget

#: What ``--stage`` accepts: ``final`` is the profile's last nnU-Net (the paper's nnsam2 model); ``delivered`` the
#: nnU-Net the run delivered for the dataset named by ``like`` (``tables/delivered.csv``, docs/method.md §7.1).
STAGES: tuple[str, ...] = ("final", "delivered", "nnunet1", "nnunet2", "nnunet3")


@dataclass(frozen=True)
class TrainedModel:
    """One trained nnU-Net stage of a run, its checkpoint verified against the SHA-256 recorded at training."""

    profile: RunProfile
    stage: str  # nnunet<k>
    folder: Path  # nnU-Net's model folder: <DatasetXXX_name>/<trainer>__<plans>__<configuration>
    checkpoint: Path
    sha256: str
    budget: Budget
    workspace: Workspace

    @property
    def dataset_id(self) -> int:
        """The nnU-Net dataset id the stage was trained under."""
        from nnsam2_utils.refine.stages import dataset_id

        return dataset_id(self.stage)

    @property
    def dataset_folder(self) -> Path:
        """nnU-Net's ``DatasetXXX_name`` folder holding the model folder."""
        return self.folder.parent


def stage_name(stage: str, stages: int) -> str:
    """``final`` → the profile's last nnU-Net (``nnunet<stages>``); ``nnunet<k>`` as given."""
    return f"nnunet{stages}" if stage == "final" else stage


def delivered_stage(workspace: Workspace, dataset: str | None) -> str:
    """The stage the run delivered for ``dataset`` (``tables/delivered.csv``); an nnU-Net stage, or a ConfigError.

    Stage 0 needs a prompted slice of each scan, so a dataset for which the run delivered stage 0 has no model to
    apply: the error says so and how to apply an nnU-Net anyway.
    """
    import pandas as pd

    table_path = workspace.tables / "delivered.csv"
    if not dataset:
        raise ConfigError("--stage delivered needs --like DATASET: the run dataset whose new scans these are like.")
    if not table_path.is_file():
        raise ConfigError(f"{table_path}: missing; the run has not delivered yet (its results page writes it).")
    table = pd.read_csv(table_path)
    rows = table.loc[table["dataset"] == dataset, "delivered"]
    if rows.empty:
        raise ConfigError(f"{table_path}: no dataset '{dataset}'; the run's datasets: {', '.join(table['dataset'])}.")
    stage = str(rows.iloc[0])
    if not stage.startswith("nnunet"):
        raise ConfigError(
            f"{table_path}: the run delivered {stage} for {dataset} (its nnU-Nets looked worse on the run's own "
            f"evidence), and {stage} needs a prompted slice in every scan. Use --stage final or nnunet<k> to apply an "
            "nnU-Net anyway, and check its labels."
        )
    return stage


def find_model(
    profile: str,
    stage: str = "final",
    device: str | None = None,
    like: str | None = None,
    work_dir: str | Path | None = None,
) -> TrainedModel:
    """The trained model of a run profile's stage; ``device`` replaces the profile's ``refine.device``; ``work_dir``
    the run's work folder (default: ``work/<profile>``, or under ``NNSAM2_WORK``).

    ``stage="delivered"``: the nnU-Net the run delivered for the dataset ``like`` (:func:`delivered_stage`).

    A profile whose stage was never trained is a CheckpointError naming the missing checkpoint and the command
    that trains it; a checkpoint whose bytes differ from the SHA-256 recorded at training is refused.
    """
    from nnsam2_utils.refine.checkpoint import recorded_digest  # torch: imported only when needed
    from nnsam2_utils.refine.nnunet import model_folder
    from nnsam2_utils.refine.stages import dataset_id, stage_budget

    if stage not in STAGES:
        raise ConfigError(f"--stage {stage}: choose one of {', '.join(STAGES)}.")
    loaded = load_profile(profile)
    workspace = Workspace(Path(work_dir).resolve()) if work_dir else Workspace.for_profile(loaded.profile)
    if stage == "delivered":
        stage = delivered_stage(workspace, like)
    name = stage_name(stage, loaded.refine.stages)
    k = int(name.removeprefix("nnunet"))
    if k > loaded.refine.stages:
        raise ConfigError(
            f"{profile_path(profile)}: profile '{loaded.profile}' trains {loaded.refine.stages} nnU-Net stage(s) "
            f"(refine.stages), so it has no {name}. Choose --stage final or nnunet1..nnunet{loaded.refine.stages}."
        )
    # the training precision does not apply to prediction (nnU-Net predicts in fp32 on a CPU)
    budget = stage_budget({**loaded.section("refine"), "precision": "fp32"}, k, seed=loaded.seed)
    if device:
        budget = dataclasses.replace(budget, device=device)
    folder = model_folder(workspace.stage(name) / "nnunet", dataset_id(name), name, budget)
    checkpoint = folder / f"fold_{budget.fold}" / "checkpoint_final.pth"
    if not checkpoint.is_file():
        raise CheckpointError(
            f"{checkpoint}: no trained {name} model for run profile '{loaded.profile}'. Run the profile first: "
            f"`make book PROFILE={loaded.profile}` (or `nnsam2 run --profile {loaded.profile}`), then predict again."
        )
    digest = recorded_digest(checkpoint)  # the run record's, never a checksum file in the model folder
    return TrainedModel(loaded, name, folder, checkpoint, digest, budget, workspace)
