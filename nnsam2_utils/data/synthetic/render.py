"""Rendering one phantom scan: tissue fields, partial volume, contrasts per sequence, bias field and noise."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnsam2_utils.data.synthetic.anatomy import (
    DISCS,
    LABELLED,
    N_TISSUES,
    BodyOutline,
    Shape,
    Subject,
    T,
    Tube,
    body_outline,
    bowel_loops,
    cross_section,
    inside_body,
)
from nnsam2_utils.data.synthetic.specs import MUSCLE_NAMES, DatasetSpec


# --- random numbers ----------------------------------------------------------------------------
def scan_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator for (seed, keys...); strings hashed with CRC-32 (stable across processes)."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *ints]))


# --- scanner grid and painting ---------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """A canonical (LPS, identity direction) voxel grid and the patient's pose in it.

    World (x, y) = R(theta) (u, v) + (tx, ty); world z = anatomical z + tz.
    """

    nx: int
    ny: int
    nz: int
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    theta: float
    shift: tuple[float, float, float]

    def z_anat(self, k: np.ndarray | int) -> np.ndarray | float:
        """Anatomical z of the centre of canonical slice k."""
        return self.origin[2] + np.asarray(k) * self.spacing[2] - self.shift[2]

    def to_anat(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx, dy = x - self.shift[0], y - self.shift[1]
        return c * dx + s * dy, -s * dx + c * dy

    def to_world(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.theta), math.sin(self.theta)
        return c * u - s * v + self.shift[0], s * u + c * v + self.shift[1]

    def output_anat(self) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical (u, v) of every output voxel centre, arrays (ny, nx)."""
        x = self.origin[0] + np.arange(self.nx) * self.spacing[0]
        y = self.origin[1] + np.arange(self.ny) * self.spacing[1]
        xx, yy = np.meshgrid(x, y)
        return self.to_anat(xx, yy)


class Canvas:
    """The fine in-plane grid of one scan; paints shapes into tissue maps."""

    def __init__(self, grid: Grid, factor: int):
        self.grid, self.f = grid, factor
        self.fx, self.fy = grid.spacing[0] / factor, grid.spacing[1] / factor
        self.x_start = grid.origin[0] - grid.spacing[0] / 2 + self.fx / 2
        self.y_start = grid.origin[1] - grid.spacing[1] / 2 + self.fy / 2
        self.height, self.width = grid.ny * factor, grid.nx * factor
        x = self.x_start + np.arange(self.width) * self.fx
        y = self.y_start + np.arange(self.height) * self.fy
        xx, yy = np.meshgrid(x, y)
        u, v = grid.to_anat(xx, yy)
        self.u, self.v = u.astype(np.float32), v.astype(np.float32)
        self._luts: dict[tuple[int, ...], np.ndarray] = {}

    def window(self, cu: float, cv: float, r: float) -> tuple[int, int, int, int]:
        """Fine index window (row_lo, row_hi, col_lo, col_hi) covering the anatomical box centre ± r."""
        g = self.grid
        c, s = math.cos(g.theta), math.sin(g.theta)
        x = c * cu - s * cv + g.shift[0]
        y = s * cu + c * cv + g.shift[1]
        half = r * (abs(c) + abs(s))
        c_lo = int((x - half - self.x_start) / self.fx) - 1
        c_hi = int((x + half - self.x_start) / self.fx) + 3
        r_lo = int((y - half - self.y_start) / self.fy) - 1
        r_hi = int((y + half - self.y_start) / self.fy) + 3
        return max(r_lo, 0), min(r_hi, self.height), max(c_lo, 0), min(c_hi, self.width)

    def _lut(self, over: tuple[int, ...]) -> np.ndarray:
        if over not in self._luts:
            lut = np.zeros(256, dtype=bool)
            lut[list(over)] = True
            self._luts[over] = lut
        return self._luts[over]

    def paint(
        self,
        tissue_map: np.ndarray,
        shapes: Sequence[Shape],
        r0: int = 0,
        c0: int = 0,
        skip_inside: tuple[int, int, int, int] | None = None,
    ) -> None:
        """Paint shapes in order into ``tissue_map`` (a region whose top-left fine index is r0, c0).

        Shapes whose window lies entirely inside ``skip_inside`` are skipped (that area is repainted).
        """
        h, w = tissue_map.shape
        for sh in shapes:
            r = sh.radius
            rl, rh, cl, ch = self.window(sh.cu, sh.cv, r)
            if skip_inside is not None and (
                skip_inside[0] <= rl and rh <= skip_inside[1] and skip_inside[2] <= cl and ch <= skip_inside[3]
            ):
                continue
            rl, rh, cl, ch = max(rl, r0), min(rh, r0 + h), max(cl, c0), min(ch, c0 + w)
            if rl >= rh or cl >= ch:
                continue
            du = self.u[rl:rh, cl:ch] - sh.cu
            dv = self.v[rl:rh, cl:ch] - sh.cv
            if sh.angle:
                c, s = math.cos(sh.angle), math.sin(sh.angle)
                du, dv = c * du + s * dv, -s * du + c * dv
            p, q = du * (1.0 / sh.a), dv * (1.0 / sh.b)
            p2, q2 = p * p, q * q
            if sh.n == 2.0:
                inside = p2 + q2 <= 1.0
            elif sh.n == 4.0:
                inside = p2 * p2 + q2 * q2 <= 1.0
            elif sh.n == 3.0:
                inside = p2 * np.abs(p) + q2 * np.abs(q) <= 1.0
            elif not sh.wobble:
                inside = p2 ** (sh.n / 2) + q2 ** (sh.n / 2) <= 1.0
            if sh.wobble:  # an irregular outline: radius scaled by 1 + sum_k a_k cos(k phi + phase_k)
                phi = np.arctan2(q, p)
                scale = np.ones_like(p)
                for k in range(0, len(sh.wobble), 2):
                    scale += sh.wobble[k] * np.cos((k // 2 + 2) * phi + sh.wobble[k + 1])
                inside = p2 ** (sh.n / 2) + q2 ** (sh.n / 2) <= scale**sh.n
            sub = tissue_map[rl - r0 : rh - r0, cl - c0 : ch - c0]
            if sh.over is not None:
                inside &= self._lut(sh.over)[sub]
            sub[inside] = sh.tissue


def block_fractions(tissue_map: np.ndarray, factor: int) -> np.ndarray:
    """Tissue fractions of every output voxel: (rows, cols, N_TISSUES) from a fine tissue map."""
    h, w = tissue_map.shape[0] // factor, tissue_map.shape[1] // factor
    blocks = (np.arange(h * w, dtype=np.int64) * N_TISSUES).reshape(h, 1, w, 1)
    idx = (blocks + tissue_map.reshape(h, factor, w, factor)).ravel()
    counts = np.bincount(idx, minlength=h * w * N_TISSUES)
    return counts.reshape(h, w, N_TISSUES).astype(np.float32) / float(factor * factor)


# --- smooth random fields in the subject's anatomy ----------------------------------------------
@dataclass(frozen=True)
class Field3D:
    """A scalar field on a regular anatomical grid (z, v, u), sampled with linear interpolation."""

    data: np.ndarray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]

    def sample(self, z: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
        coords = np.stack(
            [
                (np.broadcast_to(z, u.shape) - self.origin[0]) / self.spacing[0],
                (v - self.origin[1]) / self.spacing[1],
                (u - self.origin[2]) / self.spacing[2],
            ]
        )
        return ndimage.map_coordinates(self.data, coords, order=1, mode="nearest").astype(np.float32)


def gaussian_field(
    rng: np.random.Generator,
    origin: tuple[float, float, float],
    extent: tuple[float, float, float],
    spacing: tuple[float, float, float],
    sigma_mm: tuple[float, float, float],
) -> Field3D:
    """Unit-variance smooth Gaussian random field (white noise filtered with a Gaussian)."""
    shape = tuple(int(math.ceil(e / s)) + 1 for e, s in zip(extent, spacing))
    noise = rng.standard_normal(shape, dtype=np.float32)
    smooth = ndimage.gaussian_filter(noise, [sg / sp for sg, sp in zip(sigma_mm, spacing)], mode="wrap", truncate=3.0)
    smooth /= float(smooth.std()) + 1e-12
    return Field3D(smooth, origin, spacing)


@dataclass(frozen=True)
class SubjectFields:
    """Texture fields fixed in a subject's anatomy."""

    muscle_smooth: Field3D
    muscle_marbling: Field3D
    tubes: tuple[Tube, ...]


MARBLING_WIDTH = 0.28  # ridge width in SD units of the marbling field


_MARBLING_MEAN = 1.0 / math.sqrt(1.0 + 2.0 / MARBLING_WIDTH**2)  # E[exp(-(g/w)^2)], g ~ N(0, 1)


# Intramuscular fat is patchy: streaks along the fascicles where the muscle is fattier, not a net over the whole
# muscle (Crawford et al., AJNR 2016;37:742-748; Kjaer et al., BMC Med 2007;5:2 grade it as spots and streaks).
# The marbling ridges are gated by the smooth fat field: a logistic step, about a third of the muscle open.
MARBLING_GATE = (3.0, 0.45)  # slope, threshold (SD units of the smooth field)


def marbling_gate(smooth: np.ndarray) -> np.ndarray:
    """Share of the marbling ridges shown at each point (0..1) from the smooth fat field."""
    slope, threshold = MARBLING_GATE
    return 1.0 / (1.0 + np.exp(-slope * (smooth - threshold)))


def _gate_mean() -> float:
    """E[gate(g)] for g ~ N(0, 1) (quadrature), so the gated streaks add no mean fat."""
    g = np.linspace(-6.0, 6.0, 2401)
    weights = np.exp(-0.5 * g**2)
    return float((marbling_gate(g) * weights).sum() / weights.sum())


_GATED_MARBLING_MEAN = _MARBLING_MEAN * _gate_mean()  # the two fields are independent


# The other skeletal muscles (psoas, quadratus lumborum, abdominal wall, gluteal) share the back muscles' texture at
# a lower amplitude: psoas fat fraction is a few per cent, below multifidus and erector spinae (Crawford 2016), so
# texture is no cue that a muscle is a labelled one.
OTHER_MUSCLE_TEXTURE = 0.5


def subject_fields(subject: Subject, body: BodyOutline) -> SubjectFields:
    """Fat-infiltration and bowel texture fields of one subject (deterministic from its seed)."""
    rng = np.random.default_rng(subject.field_seed)
    top = subject.level_l4 + subject.level_l5
    z0, z_extent = -45.0, top + 90.0
    muscle_origin, muscle_extent = (z0, -20.0, -112.0), (z_extent, 125.0, 224.0)
    return SubjectFields(
        muscle_smooth=gaussian_field(rng, muscle_origin, muscle_extent, (5.0, 2.5, 2.5), (14.0, 6.0, 6.0)),
        # streaks run along z and, in-plane, mostly antero-posteriorly (the fascicles' septa): an elongated kernel
        muscle_marbling=gaussian_field(rng, muscle_origin, muscle_extent, (4.0, 1.0, 1.0), (6.0, 2.6, 1.4)),
        tubes=bowel_loops(rng, subject, body),
    )


# --- contrasts -----------------------------------------------------------------------------------
# water-signal of every tissue (arbitrary units) for T1w and T2w spin echo, proton density for Dixon,
# and its fat fraction; fat signal is FAT_SIGNAL. CT: attenuation in HU (native, portal venous).
_TISSUE_TABLE: dict[str, tuple[float, float, float, float, float, float]] = {
    #                    ff     T1w   T2w    PD    HU    HU_pv
    "air": (0.0, 0, 0, 0.0, -1000, -1000),
    "skin": (0.1, 350, 300, 0.7, 40, 60),
    "subcutaneous_fat": (0.92, 300, 300, 1.0, -105, -105),
    "visceral_fat": (0.88, 300, 300, 1.0, -95, -95),
    "muscle": (0.04, 330, 190, 1.0, 51, 58),
    "cortical_bone": (0.0, 25, 20, 0.05, 850, 850),
    "cancellous_bone": (0.45, 350, 350, 0.85, 200, 200),
    "annulus": (0.0, 250, 130, 0.7, 85, 90),
    "nucleus": (0.0, 280, 950, 0.9, 75, 80),
    "csf": (0.0, 100, 1150, 0.6, 8, 8),
    "nerve_root": (0.0, 330, 320, 0.8, 35, 40),
    "artery": (0.0, 70, 60, 0.9, 40, 165),
    "vein": (0.0, 110, 140, 0.8, 40, 140),
    "bowel_wall": (0.02, 380, 330, 0.8, 40, 95),
    "bowel_content": (0.05, 300, 450, 0.7, 25, 30),
    "bowel_fluid": (0.0, 120, 1000, 0.9, 10, 12),
    "bowel_gas": (0.0, 10, 10, 0.02, -900, -900),
    "kidney": (0.0, 450, 650, 0.95, 32, 175),
    "fascia": (0.1, 120, 70, 0.35, 65, 70),
    "joint_fluid": (0.0, 120, 900, 0.8, 15, 15),
    "table": (0.0, 0, 0, 0.0, 120, 120),
    "mesenteric_fat": (0.88, 300, 300, 1.0, -95, -95),
}


FAT_SIGNAL = {"T1w": 950.0, "T2w": 800.0}


MUSCLE_HU_FAT_FREE, FAT_HU = 58.0, -105.0
MUSCLE_WATER = {"T1w": 330.0, "T2w": 190.0}


DIXON_SCALE = 700.0


@dataclass(frozen=True)
class Channel:
    """value = fractions @ tissue_values + sum_k frac_k (c0 + c1 * ff_k) over the labelled muscles."""

    tissue_values: np.ndarray
    c0: float
    c1: float


def tissue_fat_fractions(subject: Subject) -> np.ndarray:
    """Fat fraction of every tissue (labelled muscles: 0, they carry their own field)."""
    ff = np.zeros(N_TISSUES, dtype=np.float32)
    for name, row in _TISSUE_TABLE.items():
        ff[T[name]] = row[0]
    ff[T["cancellous_bone"]] = subject.marrow_ff
    return ff


def channels(spec: DatasetSpec, subject: Subject) -> dict[str, Channel]:
    """The image channels of a dataset ('image', plus 'fat' for Dixon)."""
    ff = tissue_fat_fractions(subject)
    col = {"T1w": 1, "T2w": 2, "PD": 3, "HU": 4, "HU_pv": 5}

    def values(key: str) -> np.ndarray:
        out = np.zeros(N_TISSUES, dtype=np.float32)
        for name, row in _TISSUE_TABLE.items():
            out[T[name]] = row[col[key]]
        return out

    if spec.sequence in ("T1w", "T2w"):
        water = values(spec.sequence)
        vals = (1 - ff) * water + ff * FAT_SIGNAL[spec.sequence]
        vals[list(LABELLED)] = 0.0
        m = MUSCLE_WATER[spec.sequence]
        return {"image": Channel(vals, m, FAT_SIGNAL[spec.sequence] - m)}
    if spec.sequence == "Dixon":
        pd_ = values("PD") * DIXON_SCALE
        water, fat = pd_ * (1 - ff), pd_ * ff
        water[list(LABELLED)] = 0.0
        fat[list(LABELLED)] = 0.0
        return {"image": Channel(water, DIXON_SCALE, -DIXON_SCALE), "fat": Channel(fat, 0.0, DIXON_SCALE)}
    hu = values("HU_pv" if spec.contrast == "portal_venous" else "HU")
    hu[T["cancellous_bone"]] = subject.cancellous_hu
    hu[T["muscle"]] = MUSCLE_HU_FAT_FREE * (1 - ff[T["muscle"]]) + FAT_HU * ff[T["muscle"]]
    hu[list(LABELLED)] = 0.0
    return {"image": Channel(hu, MUSCLE_HU_FAT_FREE, FAT_HU - MUSCLE_HU_FAT_FREE)}


# --- one scan ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pose:
    """Where the patient lies in the scanner (rotation in-plane, translation)."""

    theta: float
    jitter_u: float
    jitter_v: float
    z_offset: float  # sub-slice shift of the slice grid (fraction of the slice thickness)
    table_z: float
    centre_x: float
    centre_y: float


def sample_pose(rng: np.random.Generator, modality: str) -> Pose:
    """A patient position: a few degrees of rotation, a few mm of offset."""
    return Pose(
        theta=math.radians(float(rng.uniform(-4.0, 4.0))),
        jitter_u=float(rng.uniform(-8, 8)),
        jitter_v=float(rng.uniform(-6, 6)),
        z_offset=float(rng.uniform(-0.3, 0.3)),
        table_z=float(rng.uniform(-1100, -800) if modality == "CT" else rng.uniform(-60, 60)),
        centre_x=float(rng.uniform(-15, 15)),
        centre_y=float(rng.uniform(120, 180) if modality == "CT" else rng.uniform(-20, 20)),
    )


def reposition(pose: Pose, rng: np.random.Generator) -> Pose:
    """The same subject re-scanned: a small change of position."""
    return replace(
        pose,
        theta=pose.theta + math.radians(float(rng.uniform(-1.5, 1.5))),
        jitter_u=pose.jitter_u + float(rng.uniform(-3, 3)),
        jitter_v=pose.jitter_v + float(rng.uniform(-3, 3)),
        z_offset=float(np.clip(pose.z_offset + rng.uniform(-0.15, 0.15), -0.3, 0.3)),
    )


# A spine field of view is centred on the vertebral body and canal (where the radiographer puts it on the sagittal
# localiser), not on the skin: thicker or thinner subcutaneous fat moves the skin, not the muscles, in the image.
SPINE_FOV_CENTRE_V = -15.0  # mm, anatomical v (0: the canal's centre)


def plan_grid(spec: DatasetSpec, subject: Subject, body: BodyOutline, pose: Pose) -> tuple[Grid, dict[str, int]]:
    """The canonical voxel grid of a scan and the canonical slice index of every disc."""
    nx, ny = spec.matrix
    if spec.spacing_xy is None:
        need = max((2 * body.half_width + 18) / nx, (body.v_post - body.v_ant + 18) / ny)
        sxy = math.ceil(need * 100) / 100
    else:
        sxy = spec.spacing_xy
    sz = spec.slice_mm
    fov_v = ny * sxy
    if spec.fov == "body" or fov_v >= body.v_post - body.v_ant + 16:
        centre_v = (body.v_post + body.v_ant) / 2
    else:  # centred on the spine, as axial lumbar slices are planned; moved back only to keep the back's skin in
        centre_v = max(SPINE_FOV_CENTRE_V, body.v_post + 8 - fov_v / 2)
    centre = np.array([pose.jitter_u, centre_v + pose.jitter_v])
    c, s = math.cos(pose.theta), math.sin(pose.theta)
    rot_centre = np.array([c * centre[0] - s * centre[1], s * centre[0] + c * centre[1]])
    tx, ty = pose.centre_x - rot_centre[0], pose.centre_y - rot_centre[1]
    zd = subject.z_disc
    below = max(1, int(round(spec.margin_mm[0] / sz)))
    above = max(1, int(round(spec.margin_mm[1] / sz)))
    z_start = zd["L5S1"] - below * sz + pose.z_offset * sz
    nz = int(math.floor((zd["L3L4"] + above * sz - z_start) / sz)) + 1
    origin = (pose.centre_x - (nx - 1) / 2 * sxy, pose.centre_y - (ny - 1) / 2 * sxy, z_start + pose.table_z)
    grid = Grid(nx, ny, nz, (sxy, sxy, sz), origin, pose.theta, (tx, ty, pose.table_z))
    discs = {d: int(round((zd[d] - z_start) / sz)) for d in DISCS}
    return grid, discs


@dataclass
class ScanArrays:
    """Canonical (LPS) arrays (z, y, x) of one scan and its ground truth maps."""

    grid: Grid
    discs: dict[str, int]
    label: np.ndarray
    channels: dict[str, np.ndarray]  # noise-free
    fat_fraction: np.ndarray  # true voxel fat fraction


def _base_map(canvas: Canvas, body: BodyOutline, ct: bool) -> np.ndarray:
    """z-independent tissue map: skin, fat, abdominal wall, peritoneal cavity (mesenteric fat), table."""
    u, v = canvas.u, canvas.v
    tissue = np.full(u.shape, T["air"], dtype=np.uint8)
    tissue[inside_body(u, v, body, 0, 0, 0)] = T["skin"]
    tissue[inside_body(u, v, body, 2.0, 2.0, 2.0)] = T["subcutaneous_fat"]
    inner = inside_body(u, v, body, body.sc_lat + 2, body.sc_post + 2, body.sc_ant + 2)
    tissue[inner] = T["visceral_fat"]
    w = body.wall
    wall_inner = inside_body(u, v, body, body.sc_lat + 2 + w, body.sc_post + 2 + w, body.sc_ant + 2 + w * 0.8)
    wall = inner & ~wall_inner & (v < 5.0)
    tissue[wall] = T["muscle"]
    # posterior layer of the thoracolumbar fascia under the subcutaneous fat
    post_fascia = inner & ~inside_body(u, v, body, body.sc_lat + 3.2, body.sc_post + 3.2, body.sc_ant + 3.2) & (v > 5.0)
    tissue[post_fascia] = T["fascia"]
    cavity = inside_body(u, v, body, body.sc_lat + 5 + w, body.sc_post + 5 + w, body.sc_ant + 4 + w) & (
        v < -28.0 + 18.0 * (u / body.half_width) ** 2
    )
    tissue[cavity] = T["mesenteric_fat"]
    if ct:
        table = Shape(T["table"], 0.0, body.v_post + 14.0, 260.0, 5.0, 4.0, -canvas.grid.theta, (T["air"],))
        canvas.paint(tissue, [table])
    return tissue


def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates into [lo, hi] (fields sampled outside their box mirror their inside)."""
    length = hi - lo
    t = np.mod(x - lo, 2.0 * length)
    return (lo + np.where(t < length, t, 2.0 * length - t)).astype(np.float32)


def muscle_texture(subject: Subject, fields: SubjectFields, z: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Zero-mean fat-fraction texture (diffuse field plus gated marbling) of muscle at points (u, v), height z."""
    field = fields.muscle_smooth
    top_v, top_u = (field.origin[i] + (field.data.shape[i] - 1) * field.spacing[i] for i in (1, 2))
    vv = _fold(v - subject.spine_shift(z), field.origin[1], top_v)
    uu = _fold(u, field.origin[2], top_u)
    smooth = field.sample(np.float32(z), vv, uu)
    ridge = np.exp(-((fields.muscle_marbling.sample(np.float32(z), vv, uu) / MARBLING_WIDTH) ** 2))
    streaks = ridge * marbling_gate(smooth) - _GATED_MARBLING_MEAN
    return (subject.ff_texture * smooth + subject.marbling * streaks).astype(np.float32)


def muscle_fat_fraction(subject: Subject, fields: SubjectFields, z: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fat fraction of the four back muscles at points (u, v) of height z: array (4, n)."""
    texture = muscle_texture(subject, fields, z, u, v)
    level = subject.ff_slope * (float(np.clip(subject.zeta(z), -0.3, 1.3)) - 0.5)
    bases = [subject.ff_es, subject.ff_mf, subject.ff_mf, subject.ff_es]  # R-ES, R-MF, L-MF, L-ES
    return np.stack([np.clip(b + level + texture, 0.005, 0.9) for b in bases]).astype(np.float32)


def scan_body(subject: Subject) -> BodyOutline:
    """The subject's body outline (probed over the whole lumbar segment)."""
    return body_outline(subject, np.linspace(-30.0, subject.level_l4 + subject.level_l5 + 30.0, 13))


def render_scan(spec: DatasetSpec, subject: Subject, fields: SubjectFields, pose: Pose, supersample: int) -> ScanArrays:
    """Render the noise-free canonical volumes, labels and true fat fraction of one scan."""
    body = scan_body(subject)
    grid, discs = plan_grid(spec, subject, body, pose)
    canvas = Canvas(grid, supersample)
    f = supersample
    base = _base_map(canvas, body, spec.modality == "CT")
    u_out, v_out = grid.output_anat()
    chans = channels(spec, subject)
    ff_tissue = tissue_fat_fractions(subject)
    n_sub = max(1, int(math.ceil(grid.spacing[2] / 2.0)))
    label = np.zeros((grid.nz, grid.ny, grid.nx), dtype=np.uint8)
    ff_map = np.zeros(label.shape, dtype=np.float32)
    out = {name: np.zeros(label.shape, dtype=np.float32) for name in chans}
    lab = list(LABELLED)
    for k in range(grid.nz):
        z = float(grid.z_anat(k))
        tissue = base.copy()
        window = None
        if n_sub > 1:  # the spine changes fast along z: average several heights within the slice there
            dv = subject.spine_shift(z)
            rl, rh, cl, ch = canvas.window(0.0, 3.0 + dv, 57.0)
            rl, cl = rl // f * f, cl // f * f
            rh, ch = min(-(-rh // f) * f, canvas.height), min(-(-ch // f) * f, canvas.width)
            window = (rl, rh, cl, ch)
        canvas.paint(tissue, cross_section(subject, z, fields.tubes), skip_inside=window)
        frac = block_fractions(tissue, f)
        if window is not None:
            rl, rh, cl, ch = window
            acc = np.zeros(((rh - rl) // f, (ch - cl) // f, N_TISSUES), dtype=np.float32)
            for j in range(n_sub):
                zz = z + ((j + 0.5) / n_sub - 0.5) * grid.spacing[2]
                part = base[rl:rh, cl:ch].copy()
                canvas.paint(part, cross_section(subject, zz, fields.tubes), rl, cl)
                acc += block_fractions(part, f)
            frac[rl // f : rh // f, cl // f : ch // f] = acc / n_sub
        muscle = frac[..., lab]
        background = 1.0 - muscle.sum(-1, keepdims=True)
        label[k] = np.argmax(np.concatenate([background, muscle], -1), -1).astype(np.uint8)
        where = muscle.sum(-1) > 0
        ff_k = muscle_fat_fraction(subject, fields, z, u_out[where].astype(np.float32), v_out[where].astype(np.float32))
        m = muscle[where]  # (n, 4)
        ffsum = (m * ff_k.T).sum(-1)
        msum = m.sum(-1)
        other = frac[..., T["muscle"]]
        where_other = other > 0
        tex = muscle_texture(subject, fields, z, u_out[where_other], v_out[where_other]) * OTHER_MUSCLE_TEXTURE
        other_ff = other[where_other] * np.maximum(tex, 0.005 - ff_tissue[T["muscle"]])
        ff_map[k] = frac @ ff_tissue
        ff_map[k][where] += ffsum
        ff_map[k][where_other] += other_ff
        for name, ch_ in chans.items():
            plane = frac @ ch_.tissue_values
            plane[where] += ch_.c0 * msum + ch_.c1 * ffsum
            plane[where_other] += ch_.c1 * other_ff
            out[name][k] = plane
    return ScanArrays(grid, discs, label, out, ff_map)


def _bias_field(grid: Grid, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative coil sensitivity (z, y, x): brighter posteriorly, gentle random ripple."""
    z = (np.arange(grid.nz) - grid.nz / 2)[:, None, None] * grid.spacing[2] / 120.0
    y = (np.arange(grid.ny) - grid.ny / 2)[None, :, None] * grid.spacing[1] / 120.0
    x = (np.arange(grid.nx) - grid.nx / 2)[None, None, :] * grid.spacing[0] / 120.0
    log_bias = strength * y + BIAS_TILT * float(rng.uniform(-1, 1)) * x
    for _ in range(3):  # a few long-wavelength ripples
        kx, ky, kz, phase = (
            rng.uniform(-1.2, 1.2),
            rng.uniform(-1.2, 1.2),
            rng.uniform(-0.6, 0.6),
            rng.uniform(0, 2 * np.pi),
        )
        log_bias = log_bias + BIAS_RIPPLE * np.cos(kx * x + ky * y + kz * z + phase)
    return np.exp(log_bias).astype(np.float32)


# Scan-to-scan acquisition differences within one dataset (same protocol, other session, other patient):
# * noise: SNR changes with body size, coil loading and positioning by tens of per cent between sessions
#   (Dietrich et al., JMRI 2007;26:375-385 on measuring SNR in multi-coil images); CT noise with the tube
#   current modulated to the patient's size, about ±30 % (McCollough et al., Radiographics 2006;26:503-512);
# * bias: receive-coil inhomogeneity of 10-40 % over the field of view at 1.5-3 T, larger near the surface coils
#   (Sled et al., IEEE TMI 1998;17:87-97; the N4 paper, Tustison et al., IEEE TMI 2010;29:1310-1320): the
#   posterior gradient, a left-right tilt and ripples vary per scan.
NOISE_RANGE = (0.75, 1.35)  # x the dataset's noise
BIAS_RANGE = (0.6, 1.4)  # x the dataset's posterior gradient
BIAS_TILT, BIAS_RIPPLE = 0.12, 0.06


# Respiratory motion of the anterior abdomen during a 2-D spin-echo or Dixon acquisition puts faint ghosts of
# the bright abdominal fat along the phase-encoding direction (here antero-posterior), over the back muscles
# (Wood & Henkelman, Med Phys 1985;12:143-151: periodic motion gives ghosts spaced N/period lines apart, of
# intensity growing with the displacement). Amplitude and period are drawn per scan; the part that moves fades
# from the anterior edge of the field of view to its centre, the back against the table stays still.
GHOST_SHIFT_MM = (0.5, 3.0)  # peak displacement of the anterior abdomen during the acquisition
GHOST_PERIOD_LINES = (6.0, 24.0)  # phase-encoding lines per breathing cycle


def respiratory_ghosts(signals: dict[str, np.ndarray], grid: Grid, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Complex images (z, y, x) with ghosts of a periodically displaced anterior part along y (phase encoding)."""
    ny = grid.ny
    shift = float(rng.uniform(*GHOST_SHIFT_MM)) / grid.spacing[1]  # in voxels
    period = float(rng.uniform(*GHOST_PERIOD_LINES))
    phase = float(rng.uniform(0, 2 * np.pi))
    freq = np.fft.fftfreq(ny)  # cycles per voxel of k-space line j (acquired in the order 0..ny-1)
    order = np.argsort(np.argsort(freq))  # acquisition time of each line: from -k_max to +k_max
    displacement = shift * np.sin(2 * np.pi * order / period + phase)
    modulation = np.exp(-2j * np.pi * freq * displacement)[None, :, None]
    rows = np.arange(ny, dtype=np.float32)
    moving = np.clip((0.5 * ny - rows) / (0.25 * ny), 0.0, 1.0)[None, :, None]  # anterior edge 1 -> centre 0
    out = {}
    for name, image in signals.items():
        still = image * (1.0 - moving)
        ghosted = np.fft.ifft(np.fft.fft(image * moving, axis=1) * modulation, axis=1)
        out[name] = (still + ghosted).astype(np.complex64)
    return out


def acquire(spec: DatasetSpec, scan: ScanArrays, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Noisy stored intensities (canonical arrays): Rician MRI with bias and ghosts, Gaussian-noise CT in HU."""
    noise_sd = spec.noise * float(rng.uniform(*NOISE_RANGE))
    if spec.modality == "CT":
        noise = ndimage.gaussian_filter(rng.standard_normal(scan.label.shape).astype(np.float32), (0, 0.6, 0.6))
        noise *= noise_sd / float(noise.std())
        return {"image": np.clip(np.rint(scan.channels["image"] + noise), -1024, 3071).astype(np.int16)}
    bias = _bias_field(scan.grid, spec.bias * float(rng.uniform(*BIAS_RANGE)), rng)
    signals = respiratory_ghosts({name: clean * bias for name, clean in scan.channels.items()}, scan.grid, rng)
    out = {}
    for name, signal in signals.items():
        real = signal.real + noise_sd * rng.standard_normal(signal.shape).astype(np.float32)
        imag = signal.imag + noise_sd * rng.standard_normal(signal.shape).astype(np.float32)
        out[name] = np.clip(np.rint(np.hypot(real, imag)), 0, 32767).astype(np.int16)
    return out


def to_image(array: np.ndarray, grid: Grid, direction: tuple[int, int, int]) -> sitk.Image:
    """A canonical (z, y, x) LPS array stored with the dataset's axis directions (flips only)."""
    flips = tuple(slice(None, None, -1) if d < 0 else slice(None) for d in direction[::-1])
    image = sitk.GetImageFromArray(np.ascontiguousarray(array[flips]))
    sx, sy, sz = grid.spacing
    first = [(n - 1) if d < 0 else 0 for n, d in zip((grid.nx, grid.ny, grid.nz), direction)]
    origin = [o + i * s for o, i, s in zip(grid.origin, first, (sx, sy, sz))]
    image.SetSpacing((sx, sy, sz))
    image.SetOrigin(tuple(float(round(o, 4)) for o in origin))
    image.SetDirection(tuple(float(v) for v in np.diag(direction).ravel()))
    return image


def truth_rows(dataset: str, case_id: str, subject: str, timepoint: int, scan: ScanArrays, ct: bool) -> list[dict]:
    """Tidy truth of one scan in the L3/L4-L5/S1 region (both disc slices included)."""
    lo, hi = sorted((scan.discs["L5S1"], scan.discs["L3L4"]))
    lab = scan.label[lo : hi + 1]
    ff = scan.fat_fraction[lo : hi + 1]
    hu = scan.channels["image"][lo : hi + 1] if ct else None
    voxel_ml = float(np.prod(scan.grid.spacing)) / 1000.0
    groups = [(1, "LPM", (1, 2)), (2, "LPM", (3, 4))] + [
        (1 if value in (1, 2) else 2, name, (value,)) for value, name in enumerate(MUSCLE_NAMES, start=1)
    ]
    rows = []
    for cls, muscle, values in groups:
        mask = np.isin(lab, values)
        n = int(mask.sum())
        rows.append(
            {
                "dataset": dataset,
                "case": case_id,
                "subject": subject,
                "timepoint": timepoint,
                "class": cls,
                "muscle": muscle,
                "volume_ml": round(n * voxel_ml, 4),
                "fat_fraction": round(float(ff[mask].mean()), 5) if n else float("nan"),
                "hu_mean": (round(float(hu[mask].mean()), 3) if n else float("nan")) if ct else None,
            }
        )
    return rows
