"""Lumbar anatomy of the synthetic phantom: tissues, subjects and axial cross-sections.

Everything here is in an *anatomical* frame (millimetres), independent of any scanner:

* ``u`` runs from the patient's right to the patient's left (LPS x),
* ``v`` runs from anterior to posterior (LPS y), ``v = 0`` at the centre of the spinal canal,
* ``z`` runs from inferior to superior (LPS z), ``z = 0`` at the centre of the L5/S1 disc.

A cross-section at height ``z`` is an ordered list of :class:`Shape` (superellipses painted
back to front). :func:`cross_section` is a pure function of the subject and ``z``; the
renderer in :mod:`nnsam2_utils.data.synthetic.cohort` places it in a scanner grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# --- tissues -------------------------------------------------------------------------------
TISSUES: tuple[str, ...] = (
    "air",
    "skin",
    "subcutaneous_fat",
    "visceral_fat",
    "muscle",
    "R-ES",
    "R-MF",
    "L-MF",
    "L-ES",
    "cortical_bone",
    "cancellous_bone",
    "annulus",
    "nucleus",
    "csf",
    "nerve_root",
    "artery",
    "vein",
    "bowel_wall",
    "bowel_content",
    "bowel_fluid",
    "bowel_gas",
    "kidney",
    "fascia",
    "joint_fluid",
    "table",
    "mesenteric_fat",
)
T = {name: i for i, name in enumerate(TISSUES)}
N_TISSUES = len(TISSUES)
# label value (1..4) -> tissue id; source label values of the phantom: 1 R-ES, 2 R-MF, 3 L-MF, 4 L-ES
LABELLED: tuple[int, ...] = (T["R-ES"], T["R-MF"], T["L-MF"], T["L-ES"])
BOWEL = (T["bowel_wall"], T["bowel_content"], T["bowel_fluid"], T["bowel_gas"])
CAVITY = (T["mesenteric_fat"], *BOWEL)
SOFT_INTERIOR = (T["visceral_fat"], T["muscle"], *CAVITY, T["fascia"])

DISCS: tuple[str, ...] = ("L3L4", "L4L5", "L5S1")

FASCIA_MM = 1.0  # thickness of the fascial envelope around each back muscle


@dataclass(frozen=True)
class Shape:
    """A filled superellipse ``|p/a|^n + |q/b|^n <= 1`` in the (u, v) plane.

    ``angle`` (radians) rotates the ``a`` axis from +u towards +v. ``over`` restricts
    painting to pixels currently holding one of these tissues (``None``: anything).
    """

    tissue: int
    cu: float
    cv: float
    a: float
    b: float
    n: float = 2.0
    angle: float = 0.0
    over: tuple[int, ...] | None = None
    wobble: tuple[float, ...] = ()  # (amplitude, phase) pairs of harmonics 2, 3, ... of the outline

    @property
    def radius(self) -> float:
        """A radius that contains the shape whatever its rotation."""
        grow = 1.0 + sum(abs(x) for x in self.wobble[::2])
        return (math.hypot(self.a, self.b) if self.n > 2 else max(self.a, self.b)) * grow


def superellipse_area_factor(n: float) -> float:
    """Area of the unit superellipse of exponent n (pi for an ellipse)."""
    return 4.0 * math.gamma(1 + 1 / n) ** 2 / math.gamma(1 + 2 / n)


# --- subjects ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    """Anatomy of one participant (all lengths in mm, areas in cm², fractions 0–1)."""

    id: str
    age: float
    body_scale: float  # frame size (vertebrae, body outline)
    half_width: float  # skin, lateral half width
    sc_post: float  # subcutaneous fat thickness, posterior / lateral / anterior
    sc_lat: float
    sc_ant: float
    ant_depth: float  # canal centre to anterior skin
    visceral: float  # 0..1, share of mesenteric fat between bowel loops
    es_area: float  # right erector spinae, L4/L5, nominal
    mf_area: float  # right multifidus, L4/L5, nominal
    es_asym: float  # left / right area ratio
    mf_asym: float
    psoas_area: float
    ff_es: float  # mean fat fraction at L4/L5 (before partial volume)
    ff_mf: float
    ff_slope: float  # extra fat fraction from L3/L4 to L5/S1
    ff_texture: float  # SD of the smooth fat-fraction field
    marbling: float  # amplitude of intramuscular fat streaks
    level_l4: float  # L3/L4 -> L4/L5 disc distance
    level_l5: float  # L4/L5 -> L5/S1 disc distance
    disc_height: tuple[float, float, float]
    disc_degeneration: tuple[float, float, float]
    lordosis: float
    marrow_ff: float
    cancellous_hu: float
    aorta_r: float
    field_seed: int
    muscle_wobble: tuple[tuple[float, ...], ...] = ()  # per R-ES, R-MF, L-MF, L-ES: (amp, phase, rate) x 3
    sex: str = "M"
    es_aspect: float = 1.0  # per-subject shape of the cross-sections (multiplies the nominal aspect ratio)
    mf_aspect: float = 1.0
    ql_contact: float = 0.0  # 0..1: how far the quadratus lumborum reaches back onto the erector spinae

    def wobble(self, index: int, z: float) -> tuple[float, ...]:
        """Outline harmonics of muscle ``index`` at height z (they drift slowly along z)."""
        if not self.muscle_wobble:
            return ()
        w = self.muscle_wobble[index]
        return tuple(x for k in range(0, len(w), 3) for x in (w[k], w[k + 1] + w[k + 2] * z))

    @property
    def z_disc(self) -> dict[str, float]:
        """Disc centres (anatomical z, mm)."""
        return {"L5S1": 0.0, "L4L5": self.level_l5, "L3L4": self.level_l5 + self.level_l4}

    def zeta(self, z: float) -> float:
        """Level coordinate: 0 at L3/L4, 0.5 near L4/L5, 1 at L5/S1 (extrapolated outside)."""
        top = self.level_l5 + self.level_l4
        return (top - z) / top

    def spine_shift(self, z: float) -> float:
        """Posterior shift (mm) of the spine and back muscles along z (lumbar lordosis)."""
        mid = self.level_l5
        return self.lordosis * ((z - mid) / (self.level_l4 + self.level_l5)) ** 2 * 4.0


COHORTS: dict[str, dict[str, tuple[float, float]]] = {
    # uniform ranges per cohort (men; women scaled below); areas in cm² (nominal shapes, before bone/partial
    # volume). Erector spinae about 12-20 cm² and multifidus 6-11 cm² per side at L4/L5 in adults, the athletes
    # larger and leaner (Marras et al. 2001; Crawford et al. 2016); fat fraction 5-20 % in the back-pain and
    # older groups, multifidus above erector spinae (Crawford et al. 2016). Wider ranges between people
    # (erector spinae 7-20 % in back pain) were tried: nnU-Net from a few slices gained on stage 0, so not kept
    "backpain": dict(
        age=(28, 72),
        sc_post=(10, 30),
        es_area=(12.5, 19.5),
        mf_area=(7.0, 11.0),
        ff_es=(0.10, 0.16),
        ff_mf_extra=(0.03, 0.06),
        marbling=(0.25, 0.40),
        visceral=(0.35, 0.6),
        degeneration=(0.2, 0.9),
    ),
    "athletes": dict(
        age=(19, 30),
        sc_post=(5, 11),
        es_area=(17.0, 20.5),
        mf_area=(9.5, 11.5),
        ff_es=(0.045, 0.06),
        ff_mf_extra=(0.01, 0.02),
        marbling=(0.10, 0.16),
        visceral=(0.2, 0.3),
        degeneration=(0.0, 0.2),
    ),
    "bedrest": dict(
        age=(24, 55),
        sc_post=(8, 20),
        es_area=(14.0, 19.5),
        mf_area=(8.5, 10.5),
        ff_es=(0.07, 0.10),
        ff_mf_extra=(0.02, 0.035),
        marbling=(0.15, 0.25),
        visceral=(0.3, 0.45),
        degeneration=(0.0, 0.4),
    ),
    "ct": dict(
        age=(40, 82),
        sc_post=(10, 32),
        es_area=(12.0, 18.5),
        mf_area=(7.0, 9.5),
        ff_es=(0.06, 0.09),
        ff_mf_extra=(0.015, 0.03),
        marbling=(0.15, 0.25),
        visceral=(0.35, 0.65),
        degeneration=(0.2, 0.8),
    ),
}


# Sex: the back-pain, bed-rest and CT pools are mixed, the football players male. Women's trunk muscles have
# roughly three quarters of men's cross-sectional area at L3-L5 (Marras et al., Clin Biomech 2001;16:38-46,
# MRI), a smaller frame and thicker subcutaneous fat; paraspinal fat fraction rises with age and towards
# L5/S1 and is a few points higher in women (Crawford et al., AJNR 2016;37:742-748, Dixon MRI of healthy
# volunteers).
FEMALE_SHARE: dict[str, float] = {"backpain": 0.5, "athletes": 0.0, "bedrest": 0.35, "ct": 0.45}
FEMALE_MUSCLE, FEMALE_FRAME, FEMALE_SC_FAT, FEMALE_FF = 0.78, 0.94, 1.3, 0.025


def sample_subject(rng: np.random.Generator, subject_id: str, cohort: str, level_mm: float) -> Subject:
    """Draw one participant of a cohort (``backpain``, ``athletes``, ``bedrest``, ``ct``).

    The draws of issue 16 (sex, shape) come after the older ones, so a seed keeps its subjects' other traits.
    """
    c = COHORTS[cohort]
    u = lambda key: float(rng.uniform(*c[key]))  # noqa: E731
    age = u("age")
    older = (age - 40) / 40  # about -0.5 .. 1
    scale = float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.14))
    sc_post = u("sc_post")
    sc_lat_factor, sc_ant_factor = float(rng.uniform(1.1, 1.6)), float(rng.uniform(1.0, 1.5))
    visceral = u("visceral")
    ff_es = u("ff_es") + 0.015 * max(older, 0.0)
    deg_lo, deg_hi = c["degeneration"]
    degeneration = tuple(float(x) for x in np.clip(rng.uniform(deg_lo, deg_hi, 3) * np.array([0.7, 1.0, 1.1]), 0, 1))
    level_l4 = level_mm * float(rng.uniform(0.97, 1.04))
    level_l5 = level_mm * float(rng.uniform(0.94, 1.0))
    disc_base = 0.34 * level_mm
    disc_height = tuple(float(disc_base * f * (1 - 0.3 * d)) for f, d in zip((0.95, 1.05, 0.9), degeneration))
    width, depth = float(rng.uniform(138, 165)), float(rng.uniform(150, 175))
    es_area, mf_area = u("es_area"), u("mf_area") * (1 - 0.08 * max(older, 0.0))
    es_asym = float(np.clip(rng.normal(1.0, 0.05), 0.9, 1.1))
    mf_asym = float(np.clip(rng.normal(1.0, 0.06), 0.88, 1.12))
    psoas_area = float(rng.uniform(12, 18)) * (1.15 if cohort == "athletes" else 1.0)
    ff_mf_extra = u("ff_mf_extra")
    ff_slope = float(rng.uniform(0.02, 0.05)) * (0.4 if cohort == "athletes" else 1.0)
    ff_texture, marbling = float(rng.uniform(0.02, 0.035)), u("marbling")
    lordosis = float(rng.uniform(1.0, 4.0))
    marrow_ff = float(np.clip(0.3 + 0.006 * (age - 25) + rng.normal(0, 0.04), 0.2, 0.75))
    cancellous_hu = float(np.clip(250 - 1.6 * (age - 25) + rng.normal(0, 15), 150, 250))
    aorta_r = float(rng.uniform(8.0, 10.5) + 0.03 * (age - 40))
    field_seed = int(rng.integers(0, 2**31 - 1))
    muscle_wobble = tuple(
        tuple(
            float(x)
            for h in range(3)
            for x in (rng.uniform(0.02, 0.05) / (1 + 0.5 * h), rng.uniform(0, 2 * math.pi), rng.normal(0, 0.02))
        )
        for _ in range(4)
    )
    es_aspect, mf_aspect, ql_contact = (float(rng.uniform(*r)) for r in ((0.82, 1.18), (0.85, 1.15), (0.3, 1.0)))
    female = bool(rng.uniform() < FEMALE_SHARE[cohort])
    if female:
        scale *= FEMALE_FRAME
        sc_post *= FEMALE_SC_FAT
        es_area, mf_area, psoas_area = (x * FEMALE_MUSCLE for x in (es_area, mf_area, psoas_area))
        ff_es += FEMALE_FF
    sc_lat, sc_ant = sc_post * sc_lat_factor, sc_post * sc_ant_factor
    return Subject(
        id=subject_id,
        age=age,
        body_scale=scale,
        half_width=width * scale + 0.6 * sc_lat,
        sc_post=sc_post,
        sc_lat=sc_lat,
        sc_ant=sc_ant,
        ant_depth=depth * scale + 25 * visceral + 0.8 * sc_ant,
        visceral=visceral,
        es_area=es_area,
        mf_area=mf_area,
        es_asym=es_asym,
        mf_asym=mf_asym,
        psoas_area=psoas_area,
        ff_es=ff_es,
        ff_mf=ff_es + ff_mf_extra,
        ff_slope=ff_slope,
        ff_texture=ff_texture,
        marbling=marbling,
        level_l4=level_l4,
        level_l5=level_l5,
        disc_height=disc_height,
        disc_degeneration=degeneration,
        lordosis=lordosis,
        marrow_ff=marrow_ff,
        cancellous_hu=cancellous_hu,
        aorta_r=aorta_r,
        field_seed=field_seed,
        muscle_wobble=muscle_wobble,
        sex="F" if female else "M",
        es_aspect=es_aspect,
        mf_aspect=mf_aspect,
        ql_contact=ql_contact,
    )


# --- cross-sections ------------------------------------------------------------------------
_BODY_DIMS = {"L3": (23.0, 16.5), "L4": (24.0, 17.0), "L5": (25.5, 17.5), "S1": (25.0, 16.0)}
_VERTEBRAE = ("S1", "L5", "L4", "L3")  # inferior -> superior


def vertebral_extents(subject: Subject) -> dict[str, tuple[float, float]]:
    """(bottom, top) z of every vertebral body (endplate to endplate)."""
    zd = subject.z_disc
    h = dict(zip(DISCS, subject.disc_height))
    s1_top = zd["L5S1"] - h["L5S1"] / 2
    l5 = (zd["L5S1"] + h["L5S1"] / 2, zd["L4L5"] - h["L4L5"] / 2)
    l4 = (zd["L4L5"] + h["L4L5"] / 2, zd["L3L4"] - h["L3L4"] / 2)
    l3_bottom = zd["L3L4"] + h["L3L4"] / 2
    height = l4[1] - l4[0]
    return {"S1": (s1_top - height, s1_top), "L5": l5, "L4": l4, "L3": (l3_bottom, l3_bottom + height)}


def paraspinal_shapes(subject: Subject, z: float) -> dict[str, Shape]:
    """Erector spinae and multifidus of both sides at height z (keys R-ES, R-MF, L-MF, L-ES)."""
    zeta = float(np.clip(subject.zeta(z), -0.35, 1.35))
    dv = subject.spine_shift(z)
    out: dict[str, Shape] = {}
    for side, sigma in (("R", -1.0), ("L", 1.0)):
        mf_area = subject.mf_area * (0.72 + 0.56 * zeta) * (subject.mf_asym if side == "L" else 1.0) * 100
        # caudally the erector spinae turns into its aponeurosis and the multifidus fills the space over the
        # sacrum (Bogduk, Clinical and Radiological Anatomy of the Lumbar Spine, 5th ed. 2012, ch. 9): erector
        # spinae area falls by more than half from L3/L4 to L5/S1 while the multifidus grows
        es_area = subject.es_area * (1.25 - 0.75 * zeta) * (subject.es_asym if side == "L" else 1.0) * 100
        n_mf, asp_mf = 2.4, 1.45 * subject.mf_aspect
        a_mf = math.sqrt(mf_area / (superellipse_area_factor(n_mf) * asp_mf))
        b_mf = asp_mf * a_mf
        n_es, asp_es = 2.2, (0.85 - 0.15 * zeta) * subject.es_aspect
        a_es = math.sqrt(es_area / (superellipse_area_factor(n_es) * asp_es))
        b_es = asp_es * a_es
        i_mf, i_es = (1, 0) if side == "R" else (2, 3)
        mf = Shape(
            T[f"{side}-MF"],
            sigma * (2.2 + a_mf),
            10.5 + b_mf + dv,
            a_mf,
            b_mf,
            n_mf,
            -sigma * 0.15,
            wobble=subject.wobble(i_mf, z),
        )
        es = Shape(
            T[f"{side}-ES"],
            sigma * (2.2 + 2 * a_mf + a_es - 5.0),
            5.5 + b_es + dv,
            a_es,
            b_es,
            n_es,
            -sigma * 0.22,
            wobble=subject.wobble(i_es, z),
        )
        out[f"{side}-MF"], out[f"{side}-ES"] = mf, es
    return out


def posterior_extent(subject: Subject, zs: np.ndarray) -> float:
    """Most posterior v reached by the back muscles over the heights zs."""
    best = -np.inf
    for z in zs:
        for s in paraspinal_shapes(subject, float(z)).values():
            best = max(best, s.cv + s.b + 2.0)
    return float(best)


def _bone(tissue_shape: Shape, rim: float) -> list[Shape]:
    """A bone element: cortical shell with cancellous core."""
    inner_a, inner_b = tissue_shape.a - rim, tissue_shape.b - rim
    out = [
        Shape(
            T["cortical_bone"],
            tissue_shape.cu,
            tissue_shape.cv,
            tissue_shape.a,
            tissue_shape.b,
            tissue_shape.n,
            tissue_shape.angle,
            tissue_shape.over,
        )
    ]
    if inner_a > 0.3 and inner_b > 0.3:
        out.append(
            Shape(
                T["cancellous_bone"],
                tissue_shape.cu,
                tissue_shape.cv,
                inner_a,
                inner_b,
                tissue_shape.n,
                tissue_shape.angle,
                tissue_shape.over,
            )
        )
    return out


def _iap_above(ext: dict[str, tuple[float, float]], name: str, z: float) -> bool:
    """Whether the inferior articular process of the vertebra above ``name`` reaches z."""
    index = _VERTEBRAE.index(name)
    if index + 1 >= len(_VERTEBRAE):
        return False
    lo, hi = ext[_VERTEBRAE[index + 1]]
    return -0.35 <= (z - lo) / (hi - lo) <= 0.1


def _interp_dims(name_a: str, name_b: str, w: float) -> tuple[float, float]:
    (a1, b1), (a2, b2) = _BODY_DIMS[name_a], _BODY_DIMS[name_b]
    return a1 + (a2 - a1) * w, b1 + (b2 - b1) * w


def spine_shapes(subject: Subject, z: float) -> list[Shape]:
    """Vertebral body or disc, canal, and posterior elements at height z."""
    s = subject.body_scale
    dv = subject.spine_shift(z)
    ext = vertebral_extents(subject)
    zd = subject.z_disc
    shapes: list[Shape] = []
    # anterior column: body (with endplates) or disc
    in_body = next((name for name, (lo, hi) in ext.items() if lo <= z <= hi), None)
    if in_body is not None:
        a, b = (x * s for x in _BODY_DIMS[in_body])
        lo, hi = ext[in_body]
        outline = Shape(0, 0.0, -9.0 - b + dv, a, b, 2.2)
        if z - lo < 0.6 or hi - z < 0.6:  # bony endplates
            shapes.append(Shape(T["cortical_bone"], outline.cu, outline.cv, a, b, 2.2))
        else:
            shapes += _bone(outline, 1.6)
    else:
        disc = min(DISCS, key=lambda d: abs(zd[d] - z))
        upper, lower = {"L3L4": ("L3", "L4"), "L4L5": ("L4", "L5"), "L5S1": ("L5", "S1")}[disc]
        a, b = (x * s * 1.04 for x in _interp_dims(lower, upper, 0.5))
        deg = subject.disc_degeneration[DISCS.index(disc)]
        cv = -9.0 - b + 1.0 + dv
        shapes.append(Shape(T["annulus"], 0.0, cv, a, b, 2.2))
        nuc = 0.58 - 0.3 * deg
        shapes.append(Shape(T["nucleus"], 0.0, cv + 0.12 * b, a * nuc, b * nuc * 0.9, 2.0))
    # sacral alae below the L5/S1 disc
    s1_top = ext["S1"][1]
    if z < s1_top - 1.0:
        g = min(1.0, (s1_top - 1.0 - z) / 12.0) ** 0.5
        for sigma in (-1.0, 1.0):
            ala = Shape(0, sigma * (24 + 16 * g) * s, -14.0 + dv, (8 + 14 * g) * s, 11.0 * s, 2.3, sigma * 0.2)
            shapes += _bone(ala, 1.4)
    # posterior elements of each vertebra, by position t within its body (0 bottom, 1 top)
    for name, (lo, hi) in ext.items():
        t = (z - lo) / (hi - lo)
        big = name == "L5"
        for sigma in (-1.0, 1.0):
            if 0.45 <= t <= 0.95:  # pedicle
                shapes += _bone(Shape(0, sigma * 14.0 * s, -3.0 + dv, 4.5, 7.0), 1.2)
            if (0.5 <= t <= 0.85) or (big and 0.35 <= t <= 0.9):  # transverse process
                shapes += _bone(
                    Shape(0, sigma * 31.0 * s, 2.0 + dv, 17.0 * s, 5.0 if big else 3.6, 4.0, -sigma * 0.1), 1.1
                )
            if -0.15 <= t <= 0.8:  # lamina
                angle = math.atan2(10.0, -sigma * 10.0)
                shapes += _bone(Shape(0, sigma * 9.0 * s, 12.0 + dv, 8.0, 2.9, 3.0, angle), 1.0)
            if 0.85 <= t <= 1.35:  # superior articular process
                shapes += _bone(Shape(0, sigma * 19.0 * s, 4.0 + dv, 4.8, 7.5, 2.2, sigma * 0.6), 1.2)
            if -0.35 <= t <= 0.1:  # inferior articular process
                shapes += _bone(Shape(0, sigma * 15.0 * s, 11.0 + dv, 4.2, 6.5, 2.2, sigma * 0.6), 1.2)
            if 0.85 <= t <= 1.35 and _iap_above(ext, name, z):  # facet joint space
                shapes.append(Shape(T["joint_fluid"], sigma * 17.0 * s, 7.5 + dv, 6.5, 0.55, 2.0, sigma * 0.52))
        if -0.35 <= t <= 0.55 and name != "S1" or (name == "S1" and t <= 0.9):  # spinous process / median crest
            length = 30.0 * s if name != "S1" else 18.0 * s
            shapes += _bone(Shape(0, 0.0, 14.0 + length / 2 + dv, 3.3, length / 2, 3.0), 1.2)
    # spinal canal: epidural fat, thecal sac, cauda equina
    sac = 0.8 if z < zd["L5S1"] else 1.0
    shapes.append(Shape(T["visceral_fat"], 0.0, 0.5 + dv, 12.5 * s, 9.0))
    shapes.append(Shape(T["csf"], 0.0, 0.5 + dv, 10.0 * s * sac, 7.2 * sac))
    for du, dvr in ((2.5, 3.5), (5.5, 2.3), (7.3, -0.2), (4.4, 5.3), (1.0, 5.8)):
        for sigma in (-1.0, 1.0):
            shapes.append(Shape(T["nerve_root"], sigma * du * s * sac, 0.5 + dvr * sac + dv, 1.05, 1.05))
    return shapes


def soft_tissue_shapes(subject: Subject, z: float) -> list[Shape]:
    """Kidneys, quadratus lumborum, psoas, pelvic muscles, back muscles, vessels at height z."""
    s = subject.body_scale
    dv = subject.spine_shift(z)
    zd = subject.z_disc
    zeta = subject.zeta(z)
    vertebral_extents(subject)
    body_name = "L4" if z > zd["L4L5"] else ("L5" if z > zd["L5S1"] else "S1")
    a_vb, b_vb = (x * s for x in _BODY_DIMS[body_name])
    v_vb = -9.0 - b_vb + dv
    shapes: list[Shape] = []
    # retroperitoneal fat in front of the spine
    shapes.append(Shape(T["visceral_fat"], 0.0, v_vb - b_vb - 8, 55.0 * s, 26.0, 2.0, 0.0, SOFT_INTERIOR))
    # kidneys (lower poles, near the top only; the right one sits lower)
    for sigma, start in ((-1.0, zd["L3L4"] - 14.0), (1.0, zd["L3L4"] - 6.0)):
        g = (z - start) / 30.0
        if g > 0.02:
            g = min(g, 1.0) ** 0.5
            shapes.append(
                Shape(
                    T["kidney"],
                    sigma * 72.0 * s,
                    -22.0 + dv,
                    24.0 * g + 3,
                    15.0 * g + 2,
                    2.0,
                    -sigma * 0.9,
                    SOFT_INTERIOR,
                )
            )
    # quadratus lumborum: thins out towards the iliac crest; its posterior face lies against the erector spinae,
    # only the thin middle layer of the thoracolumbar fascia between them (Willard et al., J Anat 2012;221(6))
    g_ql = float(np.clip((0.9 - zeta) / 0.9, 0.0, 1.0)) ** 0.6
    paraspinal = paraspinal_shapes(subject, z)
    for sigma, side in ((-1.0, "R"), (1.0, "L")):
        es = paraspinal[f"{side}-ES"]
        es_lat = abs(es.cu) + es.a * 0.95
        if g_ql > 0.05:
            shapes.append(
                Shape(
                    T["muscle"],
                    sigma * (es_lat - 14.0 + 3.0 * subject.ql_contact),
                    -8.0 + 6.0 * subject.ql_contact + dv,
                    20.0 * g_ql + 3,
                    9.0 * g_ql + 2.5,
                    2.0,
                    -sigma * 0.35,
                    SOFT_INTERIOR,
                )
            )
        # psoas: grows and moves antero-laterally going down
        area = subject.psoas_area * (0.65 + 0.6 * float(np.clip(zeta, -0.3, 1.3))) * 100
        a_ps = math.sqrt(area / (math.pi * 0.8))
        shapes.append(
            Shape(
                T["muscle"],
                sigma * (a_vb + 0.75 * a_ps + 1.0),
                v_vb + 4.0 - 12.0 * zeta,
                a_ps,
                0.8 * a_ps,
                2.0,
                -sigma * 0.5,
                SOFT_INTERIOR,
            )
        )
    # ilium with gluteal and iliacus muscles below the iliac crest
    z_crest = zd["L4L5"] + 0.25 * subject.level_l4
    g_il = (z_crest - z) / (0.9 * subject.level_l5)
    for sigma, side in ((-1.0, "R"), (1.0, "L")):
        if g_il <= 0.02:
            continue
        g = min(g_il, 1.0) ** 0.6
        es = paraspinal[f"{side}-ES"]
        p0 = np.array([sigma * (abs(es.cu) + es.a + 7.0), 32.0 + dv])
        d = np.array([sigma * 0.5, -0.866])
        normal = np.array([sigma * 0.866, 0.5])
        length, thick = 6.0 + 30.0 * g, 4.0 + 3.0 * g
        centre = p0 + length * d
        angle = math.atan2(d[1], d[0])
        glut = centre + (thick + 11.0) * normal
        iliacus = centre - (thick + 7.0) * normal
        shapes.append(Shape(T["muscle"], float(glut[0]), float(glut[1]), length + 6.0, 12.0, 2.0, angle, SOFT_INTERIOR))
        shapes.append(
            Shape(
                T["muscle"], float(iliacus[0]), float(iliacus[1]), length * 0.9, 7.5 * g + 1, 2.0, angle, SOFT_INTERIOR
            )
        )
        shapes += [
            Shape(
                x.tissue, x.cu, x.cv, x.a, x.b, x.n, x.angle, SOFT_INTERIOR + (T["cortical_bone"], T["cancellous_bone"])
            )
            for x in _bone(Shape(0, float(centre[0]), float(centre[1]), length, thick, 2.5, angle), 1.3)
        ]
    # back muscles: fascial envelope, erector spinae, multifidus (medial, on top), interspinous ligament
    for key in ("R-ES", "R-MF", "L-MF", "L-ES"):
        m = paraspinal[key]
        # epimysium and thoracolumbar fascia layers are about 1 mm thick (Willard et al. 2012): thinner than a
        # voxel, so partial volume leaves a faint line, not a crisp dark ring
        shapes.append(Shape(T["fascia"], m.cu, m.cv, m.a + FASCIA_MM, m.b + FASCIA_MM, m.n, m.angle, wobble=m.wobble))
    for key in ("R-ES", "L-ES", "R-MF", "L-MF"):
        shapes.append(paraspinal[key])
    shapes.append(Shape(T["fascia"], 0.0, 31.0 + dv, 1.4, 19.0, 2.0))
    # great vessels: aorta (left of midline) bifurcates at L4, IVC (right) joins at L5
    v_ves = v_vb - b_vb - subject.aorta_r - 2.5
    z_bif = zd["L4L5"] + 0.55 * subject.level_l4
    if z >= z_bif:
        shapes.append(Shape(T["artery"], 8.0, v_ves, subject.aorta_r, subject.aorta_r))
    else:
        off = 6.0 + 0.55 * (z_bif - z)
        r = 0.62 * subject.aorta_r
        for sigma in (-1.0, 1.0):
            shapes.append(Shape(T["artery"], 2.0 + sigma * off, v_ves - 0.15 * (z_bif - z), r, r))
    z_conf = zd["L4L5"] - 0.3 * subject.level_l5
    if z >= z_conf:
        shapes.append(Shape(T["vein"], -21.0, v_ves + 1.5, 12.5, 8.0, 2.0, 0.15))
    else:
        off = 10.0 + 0.6 * (z_conf - z)
        for sigma in (-1.0, 1.0):
            shapes.append(Shape(T["vein"], -4.0 + sigma * off, v_ves + 6.0, 7.0, 6.0))
    return shapes


@dataclass(frozen=True)
class Tube:
    """A bowel segment: a straight tube through the peritoneal cavity (centre at height z0)."""

    u0: float
    v0: float
    z0: float
    slope_u: float
    slope_v: float
    half_length: float
    radius: float
    wall: float
    content: str  # "fluid", "content", "gas", "air-fluid", "feces"


def bowel_loops(rng: np.random.Generator, subject: Subject, body: BodyOutline) -> tuple[Tube, ...]:
    """Small-bowel loops and the ascending/descending colon of one subject."""
    a_in = body.half_width - body.sc_lat - 2 - body.wall - 6
    v_front = body.v_ant + body.sc_ant + 2 + body.wall + 6
    v_back = -30.0
    top = subject.level_l4 + subject.level_l5
    tubes = []
    for sigma, r in ((-1.0, float(rng.uniform(16, 22))), (1.0, float(rng.uniform(13, 19)))):  # colon
        tubes.append(
            Tube(
                sigma * (a_in - r - 4),
                float(rng.uniform(-60, -40)),
                top / 2,
                float(rng.normal(0, 0.1)),
                float(rng.normal(0, 0.1)),
                200.0,
                r,
                2.0,
                "feces",
            )
        )
    area = math.pi * a_in * (v_back - v_front) / 2
    n = int(area / (math.pi * 15.0**2) * (1.25 - subject.visceral) * 1.6)
    kinds = ("fluid", "content", "gas", "air-fluid", "content")
    while n > 0:
        u0 = float(rng.uniform(-a_in, a_in))
        v0 = float(rng.uniform(v_front, v_back))
        centre_v = (v_front + v_back) / 2
        if (u0 / a_in) ** 2 + ((v0 - centre_v) / ((v_back - v_front) / 2)) ** 2 > 1:
            continue
        r = float(rng.uniform(7, 14))
        tubes.append(
            Tube(
                u0,
                v0,
                float(rng.uniform(-40, top + 40)),
                float(rng.uniform(-1.2, 1.2)),
                float(rng.uniform(-0.8, 0.8)),
                float(rng.uniform(15, 60)),
                r,
                float(rng.uniform(1.3, 2.3)),
                str(rng.choice(kinds, p=(0.3, 0.3, 0.12, 0.13, 0.15))),
            )
        )
        n -= 1
    return tuple(tubes)


def bowel_shapes(tubes: Sequence[Tube], z: float) -> list[Shape]:
    """Cross-sections of the bowel tubes at height z (painted only inside the peritoneal cavity)."""
    shapes: list[Shape] = []
    for t in tubes:
        dz = z - t.z0
        if abs(dz) > t.half_length:
            continue
        taper = min(1.0, (t.half_length - abs(dz)) / 6.0 + 0.35)
        r = t.radius * taper
        slope = math.hypot(t.slope_u, t.slope_v)
        stretch = math.sqrt(1 + slope**2)
        angle = math.atan2(t.slope_v, t.slope_u) if slope > 0 else 0.0
        cu, cv = t.u0 + t.slope_u * dz, t.v0 + t.slope_v * dz
        shapes.append(Shape(T["bowel_wall"], cu, cv, r * stretch, r, 2.0, angle, CAVITY))
        inner = r - t.wall
        if inner <= 0.8:
            continue
        lumen = {"fluid": "bowel_fluid", "gas": "bowel_gas", "air-fluid": "bowel_fluid"}.get(t.content, "bowel_content")
        shapes.append(Shape(T[lumen], cu, cv, inner * stretch, inner, 2.0, angle, CAVITY))
        if t.content == "air-fluid":  # gas rises anteriorly (v < 0 is up in a supine patient)
            shapes.append(
                Shape(
                    T["bowel_gas"],
                    cu,
                    cv - 0.55 * inner,
                    inner * stretch * 0.85,
                    inner * 0.45,
                    4.0,
                    0.0,
                    (T["bowel_fluid"],),
                )
            )
        elif t.content == "feces":  # mottled: small gas bubbles
            for k in range(4):
                ang = 2.4 * k + t.u0
                shapes.append(
                    Shape(
                        T["bowel_gas"],
                        cu + 0.5 * inner * math.cos(ang),
                        cv + 0.5 * inner * math.sin(ang),
                        2.2 + (k % 2),
                        2.0 + (k % 3) * 0.6,
                        2.0,
                        0.0,
                        (T["bowel_content"],),
                    )
                )
    return shapes


def cross_section(subject: Subject, z: float, tubes: Sequence[Tube] = ()) -> list[Shape]:
    """Every z-dependent shape at height z, in painting order (back to front)."""
    return bowel_shapes(tubes, z) + soft_tissue_shapes(subject, z) + spine_shapes(subject, z)


@dataclass(frozen=True)
class BodyOutline:
    """The z-independent body wall: skin, subcutaneous fat, abdominal wall, peritoneal cavity."""

    half_width: float
    v_post: float
    v_ant: float
    v_mid: float
    sc_post: float
    sc_lat: float
    sc_ant: float
    wall: float


def body_outline(subject: Subject, zs: np.ndarray) -> BodyOutline:
    """Body outline that clears the back muscles by the subcutaneous fat thickness."""
    v_post = posterior_extent(subject, zs) + 2.0 + subject.sc_post
    return BodyOutline(
        half_width=subject.half_width,
        v_post=v_post,
        v_ant=-subject.ant_depth,
        v_mid=-40.0 * subject.body_scale,
        sc_post=subject.sc_post,
        sc_lat=subject.sc_lat,
        sc_ant=subject.sc_ant,
        wall=10.0 * subject.body_scale,
    )


def inside_body(
    u: np.ndarray, v: np.ndarray, body: BodyOutline, inset_lat: float, inset_post: float, inset_ant: float
) -> np.ndarray:
    """Boolean mask of the body outline shrunk by the given insets (mm)."""
    a = body.half_width - inset_lat
    post = v >= body.v_mid
    b = np.where(post, body.v_post - body.v_mid - inset_post, body.v_mid - body.v_ant - inset_ant)
    n = np.where(post, 3.2, 2.2)
    p = np.abs(u / a)
    q = np.abs((v - body.v_mid) / b)
    return p**n + q**n <= 1.0
