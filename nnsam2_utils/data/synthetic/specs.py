"""What the synthetic cohort contains: one acquisition spec per dataset and the cohort sizes.

A spec fixes a dataset's protocol (matrix, in-plane spacing or a field of view fitted to the patient, slice
thickness 4-5 mm for MRI as in clinical axial lumbar protocols, 1.5-2.5 mm for CT, storage orientation) and its
nominal noise and coil-bias strength. Scans of one dataset differ around these nominal values (noise ×0.75-1.35,
bias ×0.6-1.4, respiratory ghosts: :func:`nnsam2_utils.data.synthetic.render.acquire`), as sessions of one
protocol do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

DATASETS: tuple[str, ...] = ("backpain_t1w", "backpain_t2w", "bedrest_dixon", "athletes_mri", "totalseg_ct", "word_ct")


MUSCLE_NAMES: tuple[str, ...] = ("R-ES", "R-MF", "L-MF", "L-ES")  # label values 1..4


BEDREST_VOLUME_CHANGE: tuple[float, ...] = (0.0, -0.03, -0.06)  # relative change of ES and MF area per time point


BEDREST_FF_CHANGE: tuple[float, ...] = (0.0, 0.01, 0.02)  # added fat fraction per time point


# --- specifications --------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """Acquisition of one dataset (the default size)."""

    name: str
    modality: str
    sequence: str
    cohort: str  # subject pool (see phantom_anatomy.COHORTS)
    group: str  # subjects with the same group and index share their anatomy
    prefix: str  # case id prefix
    matrix: tuple[int, int]  # (columns, rows) = (x: right->left, y: anterior->posterior)
    spacing_xy: float | None  # mm; None: fit the body (the field of view follows the patient)
    slice_mm: float
    fov: str  # "spine": centred on the back, body cut laterally; "body": whole body
    direction: tuple[int, int, int]  # signs of the stored axes in LPS (-1,-1,1 is the usual NIfTI "RAS")
    noise: float  # MRI: Rician sigma; CT: HU
    bias: float  # MRI coil bias strength (posterior brighter)
    contrast: str = "native"  # CT: "native" or "portal_venous"
    margin_mm: tuple[float, float] = (10.0, 10.0)  # below L5/S1, above L3/L4
    description: str = ""
    citation: str = ""


SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "backpain_t1w",
            "MRI",
            "T1w",
            "backpain",
            "backpain",
            "t1w",
            (256, 256),
            0.94,
            4.5,
            "spine",
            (1, 1, -1),
            22.0,
            0.35,
            description="Synthetic stand-in for the back-pain T1-weighted axial lumbar MRI (Mendeley Data k57fr854j2): "
            "same patients as backpain_t2w; slices stored superior to inferior.",
            citation="Sudirman et al., Lumbar spine MRI dataset, Mendeley Data k57fr854j2 (the real data this mimics)",
        ),
        DatasetSpec(
            "backpain_t2w",
            "MRI",
            "T2w",
            "backpain",
            "backpain",
            "t2w",
            (256, 256),
            0.94,
            4.0,
            "spine",
            (-1, -1, 1),
            20.0,
            0.35,
            description="Synthetic stand-in for the back-pain T2-weighted axial lumbar MRI (Mendeley Data k57fr854j2).",
            citation="Sudirman et al., Lumbar spine MRI dataset, Mendeley Data k57fr854j2 (the real data this mimics)",
        ),
        DatasetSpec(
            "bedrest_dixon",
            "MRI",
            "Dixon",
            "bedrest",
            "bedrest",
            "br",
            (256, 208),
            None,
            5.0,
            "body",
            (-1, -1, 1),
            14.0,
            0.15,
            description="Synthetic stand-in for the AGBRESA bed-rest Dixon MRI: each subject at three time points "
            "with a programmed loss of back-muscle volume (0, -3, -6 %) and gain of fat fraction (0, +1, +2 points). "
            "image = water, fat = fat image.",
            citation="AGBRESA bed-rest study (not public); synthetic",
        ),
        DatasetSpec(
            "athletes_mri",
            "MRI",
            "T1w",
            "athletes",
            "athletes",
            "afl",
            (256, 256),
            1.0,
            4.5,
            "spine",
            (1, 1, 1),
            22.0,
            0.35,
            description="Synthetic stand-in for the professional football players' lumbar MRI: "
            "lean, large back muscles.",
            citation="AFL players MRI (not public); synthetic",
        ),
        DatasetSpec(
            "totalseg_ct",
            "CT",
            "CT",
            "ct",
            "totalseg",
            "ts",
            (256, 256),
            None,
            1.5,
            "body",
            (-1, -1, 1),
            12.0,
            0.0,
            margin_mm=(12.0, 12.0),
            description="Synthetic stand-in for TotalSegmentator CT (Zenodo 10047292): thin slices, no contrast agent.",
            citation="Wasserthal et al., TotalSegmentator, Zenodo 10047292 (the real data this mimics)",
        ),
        DatasetSpec(
            "word_ct",
            "CT",
            "CT",
            "ct",
            "word",
            "word",
            (256, 256),
            None,
            2.5,
            "body",
            (-1, -1, -1),
            10.0,
            0.0,
            contrast="portal_venous",
            margin_mm=(12.0, 12.0),
            description="Synthetic stand-in for WORD abdominal CT (HiLab-git/WORD): portal-venous phase.",
            citation="Luo et al., WORD, HiLab-git/WORD (the real data this mimics)",
        ),
    )
}


@dataclass(frozen=True)
class SizeSpec:
    """How big a cohort is: which datasets by default, scans per dataset, and the acquisition scale."""

    datasets: tuple[str, ...]
    n_scans: int  # per dataset (bed-rest: subjects x 3 time points)
    n_bedrest_subjects: int
    level_mm: float  # mean distance between neighbouring discs
    supersample: int
    overrides: dict[str, dict] = field(default_factory=dict)
    mri_slice_mm: float | None = None  # replaces every MRI slice thickness when set
    ct_slice_mm: float | None = None
    matrix_divisor: int = 1
    margin_mm: tuple[float, float] | None = None


SIZES: dict[str, SizeSpec] = {
    # tests: two datasets, ~7 region slices per scan, <= 128^2 in-plane (a shorter lumbar segment)
    "tiny": SizeSpec(
        datasets=("backpain_t2w", "totalseg_ct"),
        n_scans=3,
        n_bedrest_subjects=1,
        level_mm=21.0,
        supersample=2,
        mri_slice_mm=7.0,
        ct_slice_mm=3.0,
        matrix_divisor=2,
        margin_mm=(6.0, 6.0),
    ),
    # the book: six datasets, 12-15 region slices per scan after CT decimation
    "default": SizeSpec(datasets=DATASETS, n_scans=3, n_bedrest_subjects=2, level_mm=26.0, supersample=2),
}


def acquisition(spec: DatasetSpec, size: SizeSpec) -> DatasetSpec:
    """The dataset's acquisition at this cohort size."""
    changes: dict = {}
    if size.matrix_divisor > 1:
        changes["matrix"] = tuple(m // size.matrix_divisor for m in spec.matrix)
        if spec.spacing_xy is not None:
            changes["spacing_xy"] = round(spec.spacing_xy * size.matrix_divisor * 1.01, 2)
    if spec.modality == "MRI" and size.mri_slice_mm:
        changes["slice_mm"] = size.mri_slice_mm
    if spec.modality == "CT" and size.ct_slice_mm:
        changes["slice_mm"] = size.ct_slice_mm
    if size.margin_mm:
        changes["margin_mm"] = size.margin_mm
    changes.update(size.overrides.get(spec.name, {}))
    return replace(spec, **changes)
