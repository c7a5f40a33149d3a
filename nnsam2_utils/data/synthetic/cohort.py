"""Synthetic demo cohort: lumbar MRI/CT phantoms with exact ground truth.

Six datasets mirror the paper's (back-pain T1w and T2w, bed-rest Dixon, athletes, two CT
collections). Every scan is rendered from an anatomical model (:mod:`.anatomy`):
tissues are painted on a grid ``supersample`` times finer in-plane than the output and, in the
spine (where things change fast along z), at several heights within the slice thickness; the
tissue fractions of every output voxel then give the partial-volume image and the label
(arg-max over background and the four muscles). Fat infiltration of the back muscles is a
smooth random field plus thin "marbling" streaks, fixed in the subject's anatomy, so repeated
scans of one subject share it. Contrasts are linear in the tissue fractions (T1w, T2w,
Dixon water/fat, CT in HU), followed by a smooth coil bias field, respiratory ghosts and Rician
noise (MRI) or Gaussian noise (CT).

Realism, so that a few annotated slices do not make the task easy (docs/method.md §11 lists the
sources; the constants sit where they are used):

* between subjects: men and women (women's back muscles ~0.78× the area, thicker subcutaneous fat,
  +2.5 points of fat fraction), frame size SD 6 %, erector spinae 12-20 cm² and multifidus 7-11 cm²
  per side at L4/L5 (men), per-subject aspect ratios of both muscles (±15-18 %), left/right asymmetry;
* along the spine: the erector spinae shrinks by more than half from L3/L4 to L5/S1 while the
  multifidus grows; ilium, gluteal and iliacus muscles appear below the iliac crest;
* neighbours: psoas, quadratus lumborum (its back face against the erector spinae, only a ~1 mm
  fascia between them) and the abdominal wall carry the same muscle texture at half amplitude;
* texture: patchy fat streaks (marbling gated by the smooth fat field, elongated antero-posteriorly
  and along z) instead of a net over the whole muscle;
* between scans of one dataset: pose (±4°, ±8 mm; bed-rest repositioning; a spine field of view
  centred on the vertebral body, so fat thickness moves the skin, not the muscles), noise ×0.75-1.35,
  posterior bias gradient ×0.6-1.4 with a left-right tilt and ripples, and faint ghosts of the
  breathing anterior abdomen along the phase-encoding (antero-posterior) axis.

Everything is deterministic from ``seed``: every subject, scan and noise field draws from
``numpy.random.default_rng`` seeded by (seed, dataset or subject group, index, purpose).

Public API: :func:`generate_cohort`; ``nnsam2 demo generate OUT --size tiny`` writes a cohort from the
command line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from nnsam2_utils.data.io import sha256, write_csv, write_if_changed, write_image
from nnsam2_utils.data.manifest import Case, Checksums, DatasetManifest, Discs, Source, dump_manifest
from nnsam2_utils.data.synthetic.anatomy import (
    Subject,
    sample_subject,
)
from nnsam2_utils.data.synthetic.render import (
    Pose,
    SubjectFields,
    acquire,
    render_scan,
    reposition,
    sample_pose,
    scan_body,
    scan_rng,
    subject_fields,
    to_image,
    truth_rows,
)
from nnsam2_utils.data.synthetic.specs import (
    BEDREST_FF_CHANGE,
    BEDREST_VOLUME_CHANGE,
    DATASETS,
    SIZES,
    SPECS,
    DatasetSpec,
    SizeSpec,
    acquisition,
)
from nnsam2_utils.errors import ConfigError

log = logging.getLogger(__name__)


# --- cohort ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanPlan:
    case_id: str
    subject: Subject
    timepoint: int
    pose: Pose


SUBJECT_PREFIX = {"backpain": "bp", "bedrest": "br", "athletes": "afl", "totalseg": "ts", "word": "word"}


def plan_dataset(spec: DatasetSpec, size: SizeSpec, seed: int) -> list[ScanPlan]:
    """Subjects, time points and positions of every scan of a dataset."""
    plans = []
    if spec.name == "bedrest_dixon":
        for i in range(size.n_bedrest_subjects):
            sid = f"{SUBJECT_PREFIX[spec.group]}{i + 1:02d}"
            subject = sample_subject(scan_rng(seed, spec.group, i, "subject"), sid, spec.cohort, size.level_mm)
            pose = sample_pose(scan_rng(seed, spec.name, i, "pose"), spec.modality)
            for tp, (dvol, dff) in enumerate(zip(BEDREST_VOLUME_CHANGE, BEDREST_FF_CHANGE), start=1):
                changed = replace(
                    subject,
                    es_area=subject.es_area * (1 + dvol),
                    mf_area=subject.mf_area * (1 + dvol),
                    ff_es=subject.ff_es + dff,
                    ff_mf=subject.ff_mf + dff,
                )
                tp_pose = pose if tp == 1 else reposition(pose, scan_rng(seed, spec.name, i, tp, "reposition"))
                plans.append(ScanPlan(f"{sid}_tp{tp}", changed, tp, tp_pose))
        return plans
    for i in range(size.n_scans):
        sid = f"{SUBJECT_PREFIX[spec.group]}{i + 1:02d}"
        subject = sample_subject(scan_rng(seed, spec.group, i, "subject"), sid, spec.cohort, size.level_mm)
        pose = sample_pose(scan_rng(seed, spec.name, i, "pose"), spec.modality)
        plans.append(ScanPlan(f"{spec.prefix}_{i + 1:03d}", subject, 1, pose))
    return plans


def generate_dataset(out_dir: Path, name: str, size: SizeSpec, seed: int, size_name: str = "default") -> Path:
    """Render, write and describe (manifest + truth table) one dataset; returns the manifest path."""
    if name not in SPECS:
        raise ConfigError(f"unknown phantom dataset '{name}'. Choose from {list(DATASETS)}.")
    spec = acquisition(SPECS[name], size)
    root = out_dir / name
    cases, truth = [], []
    field_cache: dict[int, SubjectFields] = {}
    status = {"written": 0, "unchanged": 0}
    for index, plan in enumerate(plan_dataset(spec, size, seed)):
        if plan.subject.field_seed not in field_cache:
            field_cache[plan.subject.field_seed] = subject_fields(plan.subject, scan_body(plan.subject))
        fields = field_cache[plan.subject.field_seed]
        scan = render_scan(spec, plan.subject, fields, plan.pose, size.supersample)
        stored = acquire(spec, scan, scan_rng(seed, name, index, "noise"))
        files = {"image": f"images/{plan.case_id}.nii.gz", "label": f"labels/{plan.case_id}.nii.gz"}
        arrays = {"image": stored["image"], "label": scan.label}
        if "fat" in stored:
            files["fat"] = f"fat/{plan.case_id}.nii.gz"
            arrays["fat"] = stored["fat"]
        checksums = {}
        for key, rel in files.items():
            image = to_image(arrays[key], scan.grid, spec.direction)
            result = write_if_changed(root / rel, lambda tmp, im=image: write_image(im, tmp))
            status[result] += 1
            checksums[key] = sha256(root / rel)
        stored_discs = {d: (k if spec.direction[2] > 0 else scan.grid.nz - 1 - k) for d, k in scan.discs.items()}
        cases.append(
            Case(
                id=plan.case_id,
                image=files["image"],
                label=files["label"],
                fat=files.get("fat"),
                subject=plan.subject.id,
                timepoint=plan.timepoint,
                discs=Discs(**stored_discs),
                sha256=Checksums(**checksums),
            )
        )
        truth += truth_rows(name, plan.case_id, plan.subject.id, plan.timepoint, scan, spec.modality == "CT")
    manifest = DatasetManifest(
        name=name,
        modality=spec.modality,
        sequence=spec.sequence,
        root=name,
        description=f"{spec.description} Synthetic phantom (nnsam2 demo cohort, seed {seed}); "
        f"in-plane {spec.matrix[0]}x{spec.matrix[1]}, slice {spec.slice_mm} mm.",
        source=Source(
            citation=spec.citation,
            licence="CC0 (synthetic)",
            how_to_get=f"nnsam2 demo generate OUT --size {size_name} --seed {seed} --datasets {name}",
        ),
        label_map={1: 1, 2: 1, 3: 2, 4: 2},
        muscle_map={1: "R-ES", 2: "R-MF", 3: "L-MF", 4: "L-ES"},
        decimate_to_mm=5.0 if spec.modality == "CT" else None,
        cases=cases,
    )
    manifest_path = out_dir / f"{name}.yaml"
    write_if_changed(manifest_path, lambda tmp: dump_manifest(manifest, tmp))
    table = pd.DataFrame(
        truth,
        columns=["dataset", "case", "subject", "timepoint", "class", "muscle", "volume_ml", "fat_fraction", "hu_mean"],
    )
    write_if_changed(out_dir / f"{name}_truth.csv", lambda tmp: write_csv(table, tmp))
    log.info("%s: %d scans (%d files written, %d unchanged)", name, len(cases), status["written"], status["unchanged"])
    return manifest_path


def generate_cohort(
    out_dir: Path, size: str = "default", seed: int = 0, datasets: Sequence[str] | None = None
) -> list[Path]:
    """Write the synthetic cohort (images, labels, Dixon fat, manifests, truth tables); returns the manifests."""
    if size not in SIZES:
        raise ConfigError(f"unknown phantom size '{size}'. Choose from {list(SIZES)}.")
    spec = SIZES[size]
    names = tuple(datasets) if datasets is not None else spec.datasets
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ConfigError(f"unknown phantom dataset(s) {unknown}. Choose from {list(DATASETS)}.")
    out_dir = Path(out_dir)
    paths = []
    for name in names:
        start = time.perf_counter()
        paths.append(generate_dataset(out_dir, name, spec, seed, size))
        log.info("%s generated in %.1f s", name, time.perf_counter() - start)
    return paths
