"""``nnsam2 export`` (docs/method.md §13): a run's trained nnU-Net as a zip in nnU-Net v2's own export layout
(what ``nnUNetv2_export_model_to_zip`` writes, so ``nnUNetv2_install_pretrained_model_from_zip`` installs it),
with the trainer file nnU-Net needs to find ``nnUNetTrainer_nnsam2`` and the model card, inside and beside it."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nnsam2_utils.apply.model import TrainedModel, find_model
from nnsam2_utils.apply.model_card import TRAINER_FILE, TRAINER_FOLDER, model_card, trainer_source
from nnsam2_utils.data.io import atomic_path
from nnsam2_utils.errors import DataError

log = logging.getLogger(__name__)

#: Files of a fold folder nnU-Net's export takes (when present), and the SHA-256 nnsam2 recorded at training.
FOLD_FILES: tuple[str, ...] = ("checkpoint_final.pth", "checkpoint_final.pth.sha256", "debug.json", "progress.png")
#: Files of the model folder nnU-Net's export takes.
MODEL_FILES: tuple[str, ...] = ("plans.json", "dataset.json", "dataset_fingerprint.json")
CARD = "MODEL_CARD.md"


@dataclass(frozen=True)
class ExportResult:
    """The zip, the model card written beside it, and the model they hold."""

    zip: Path
    card: Path
    model: TrainedModel
    members: list[str]


def card_path(zip_path: Path) -> Path:
    """The model card beside the zip: ``OUT.zip`` → ``OUT.MODEL_CARD.md``."""
    return zip_path.with_name(zip_path.name.removesuffix(".zip") + "." + CARD)


def export_members(model: TrainedModel) -> list[tuple[Path, str]]:
    """(file, name in the zip) of the model, named relative to nnU-Net's results folder as nnU-Net exports them."""
    base = f"{model.dataset_folder.name}/{model.folder.name}"
    fold = f"fold_{model.budget.fold}"
    members = [(model.folder / fold / name, f"{base}/{fold}/{name}") for name in FOLD_FILES]
    members += [(model.folder / name, f"{base}/{name}") for name in MODEL_FILES]
    members.append((trainer_source(), f"{model.dataset_folder.name}/{TRAINER_FOLDER}/{TRAINER_FILE}"))
    return [(path, name) for path, name in members if path.is_file()]


def export_model(out: str | Path, profile: str = "demo", stage: str = "final", force: bool = False) -> ExportResult:
    """Write the model of ``profile``'s ``stage`` as an nnU-Net v2 zip, with its model card inside and beside it.

    The checkpoint is checked against the SHA-256 recorded at training first; an existing zip or card is
    refused unless ``force``. Both are written atomically.
    """
    out = Path(out)
    if out.suffix != ".zip":
        raise DataError(f"{out}: the export is a zip file; give a name ending in .zip.")
    model = find_model(profile, stage)
    card = card_path(out)
    for path in (out, card):
        if path.exists() and not force:
            raise DataError(f"{path}: exists already; nothing was written. Choose another name, or give --force.")
    text = model_card(model, out.name)
    members = export_members(model)
    names = [name for _, name in members] + [f"{model.dataset_folder.name}/{CARD}"]
    with atomic_path(out, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in members:
            archive.write(path, name)
        archive.writestr(names[-1], text)
    with atomic_path(card, suffix=".md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("exported %s (%s, SHA-256 %s) to %s", model.stage, model.checkpoint, model.sha256, out)
    return ExportResult(out, card, model, names)
