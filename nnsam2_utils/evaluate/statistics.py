"""Agreement of automated vs expert measurements: TOST, mixed model, ICC, Bland–Altman.

Every paired function takes ``auto`` and ``expert`` as equally long 1-D sequences, matched by
position (pandas indices are ignored). Differences are always ``auto − expert``.

Edge-case semantics (shared by every function here):

* **NaN** in either member of a pair drops the pair; the number dropped is returned
  (``n_dropped``) and logged.
* **Fewer than 3 complete pairs**, **mismatched lengths**, a **zero expert mean** (no
  relative margin) and **zero variance of all values** (ICC undefined) raise
  :class:`StatsError`, a ``ValueError`` whose message names the problem and what is needed.
  :func:`agreement_table` catches these and reports NaN with the message in ``note``.
* **Identical differences** (SD of ``auto − expert`` is 0, e.g. perfect agreement): the TOST
  is decided without error: p = 0 when ``|mean difference| < margin``, else p = 1; the CI
  collapses to the mean difference. ICC confidence intervals are then undefined (NaN, noted).
* The equivalence margin is ``margin_fraction × |mean of the expert values|`` (absolute
  value, so negative HU means work); TOST at level α uses the (1 − 2α) CI of the difference.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pingouin as pg
from scipy import stats as sps

from nnsam2_utils.errors import Nnsam2Error

log = logging.getLogger(__name__)

MIN_PAIRS = 3
MIN_SUBJECTS = 3
KEYS: tuple[str, ...] = ("dataset", "case", "class", "measure")


class StatsError(Nnsam2Error, ValueError):
    """A statistic cannot be computed from the data given (too few pairs, no variance, …)."""


# --------------------------------------------------------------------------- inputs


@contextmanager
def full_precision() -> Iterator[None]:
    """Switch off pingouin's display rounding (it rounds ICC CIs to 2 decimals) for a block.

    Also silences deprecation warnings that pingouin's own pandas calls raise.
    """
    saved = dict(pg.options)
    for key in [k for k in pg.options if str(k).startswith("round")]:
        del pg.options[key]
    pg.options["round"] = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"pingouin\.")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pingouin\.")
            yield
    finally:
        pg.options.clear()
        pg.options.update(saved)


def paired_arrays(
    auto: Sequence[float], expert: Sequence[float], min_pairs: int = MIN_PAIRS
) -> tuple[np.ndarray, np.ndarray, int]:
    """Float arrays of the complete pairs and the number of pairs dropped for NaN.

    Raises StatsError on different lengths, non 1-D input or fewer than ``min_pairs``
    complete pairs.
    """
    a = np.asarray(auto, dtype=np.float64)
    e = np.asarray(expert, dtype=np.float64)
    if a.ndim != 1 or e.ndim != 1:
        raise StatsError(f"auto and expert must be 1-D sequences, got shapes {a.shape} and {e.shape}.")
    if a.shape != e.shape:
        raise StatsError(
            f"auto has {a.size} values but expert has {e.size}: pass one automated and one "
            "expert value per scan and class, in the same order."
        )
    keep = np.isfinite(a) & np.isfinite(e)
    dropped = int(a.size - keep.sum())
    if dropped:
        log.warning("dropped %d of %d pairs with NaN/Inf values", dropped, a.size)
    if keep.sum() < min_pairs:
        raise StatsError(
            f"only {int(keep.sum())} complete pairs ({dropped} dropped for NaN): at least "
            f"{min_pairs} automated/expert pairs are needed."
        )
    return a[keep], e[keep], dropped


def relative_margin(expert: np.ndarray, margin_fraction: float) -> float:
    """``margin_fraction × |mean(expert)|``; StatsError when that is not positive."""
    if not margin_fraction > 0:
        raise StatsError(f"margin_fraction must be positive, got {margin_fraction}.")
    margin = margin_fraction * abs(float(np.mean(expert)))
    if not margin > 0:
        raise StatsError(
            "the expert mean is 0, so a margin relative to it is 0: equivalence cannot be "
            "tested. Use an absolute margin or a measure with a non-zero mean."
        )
    return margin


# --------------------------------------------------------------------------- TOST


@dataclass(frozen=True)
class TostResult:
    """Paired TOST: p = max of the two one-sided p-values; CI at level 1 − 2α."""

    p: float
    p_lower: float
    p_upper: float
    margin: float
    mean_difference: float
    ci_low: float
    ci_high: float
    n: int
    n_dropped: int
    df: int


def tost_paired(
    auto: Sequence[float], expert: Sequence[float], margin_fraction: float = 0.10, alpha: float = 0.05
) -> TostResult:
    """Paired two one-sided tests of ``|mean(auto − expert)| < margin``.

    H0⁻: mean difference ≤ −margin (``p_lower``), H0⁺: mean difference ≥ +margin
    (``p_upper``); equivalence at level α when ``p = max(p_lower, p_upper) < α``, which is the
    same as the (1 − 2α) CI lying inside (−margin, margin). p from ``pingouin.tost``.
    """
    a, e, dropped = paired_arrays(auto, expert)
    margin = relative_margin(e, margin_fraction)
    d = a - e
    n = d.size
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / np.sqrt(n)
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(a).max()), float(np.abs(e).max())):  # rounding noise only
        inside = abs(mean) < margin
        log.warning(
            "tost_paired: all differences equal (%g); decided without a test: %s",
            mean,
            "equivalent" if inside else "not equivalent",
        )
        p_lower = 0.0 if mean > -margin else 1.0
        p_upper = 0.0 if mean < margin else 1.0
        return TostResult(max(p_lower, p_upper), p_lower, p_upper, margin, mean, mean, mean, n, dropped, n - 1)
    with full_precision():
        p = float(pg.tost(a, e, bound=float(margin), paired=True).at["TOST", "pval"])
    p_lower = float(sps.t.sf((mean + margin) / se, n - 1))
    p_upper = float(sps.t.cdf((mean - margin) / se, n - 1))
    half = float(sps.t.ppf(1 - alpha, n - 1)) * se
    return TostResult(p, p_lower, p_upper, margin, mean, float(mean - half), float(mean + half), n, dropped, n - 1)


def smallest_equivalence_margin(auto: Sequence[float], expert: Sequence[float], alpha: float = 0.05) -> float:
    """Smallest margin, as a fraction of |expert mean|, at which the paired TOST is significant.

    Closed form: ``(|mean d| + t₁₋α,ₙ₋₁ · SE) / |mean expert|`` — the farther end of the
    (1 − 2α) CI of the difference. It is an infimum: every larger margin gives p < α.
    """
    a, e, _ = paired_arrays(auto, expert)
    relative_margin(e, 1.0)  # raises on a zero expert mean
    d = a - e
    se = float(d.std(ddof=1)) / np.sqrt(d.size)
    reach = abs(float(d.mean())) + float(sps.t.ppf(1 - alpha, d.size - 1)) * se
    return reach / abs(float(e.mean()))


# --------------------------------------------------------------------------- Bland–Altman


@dataclass(frozen=True)
class BlandAltman:
    """Bias (mean auto − expert), SD of the differences and the 95 % limits of agreement."""

    bias: float
    sd: float
    loa_low: float
    loa_high: float
    n: int
    n_dropped: int


def bland_altman(auto: Sequence[float], expert: Sequence[float], z: float = 1.96) -> BlandAltman:
    """Bias ± ``z`` SD (SD with n − 1). Identical differences give SD 0 and LoA = bias."""
    a, e, dropped = paired_arrays(auto, expert)
    d = a - e
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    return BlandAltman(bias, sd, bias - z * sd, bias + z * sd, d.size, dropped)


# --------------------------------------------------------------------------- ICC


@dataclass(frozen=True)
class IccResult:
    """ICC(3,1) (consistency) and ICC(2,1) (absolute agreement) with 95 % CIs."""

    icc3: float
    icc3_low: float
    icc3_high: float
    icc2: float
    icc2_low: float
    icc2_high: float
    n: int
    n_dropped: int
    note: str = ""


def _ci(row: pd.Series) -> tuple[float, float]:
    low, high = np.asarray(row["CI95"] if "CI95" in row.index else row["CI95%"], dtype=float)
    return float(low), float(high)


def icc_from_matrix(ratings: np.ndarray) -> IccResult:
    """ICC(3,1) and ICC(2,1) of an n targets × k raters matrix (no NaN), via pingouin.

    Raises StatsError for fewer than 3 targets, fewer than 2 raters, NaN, or when every
    value is equal. When the residual mean square is 0 (raters differ by a constant) the
    ICCs follow from the formulas and the CIs are NaN (noted).
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_PAIRS or x.shape[1] < 2:
        raise StatsError(f"ICC needs at least {MIN_PAIRS} targets × 2 raters, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise StatsError("ICC ratings hold NaN/Inf; drop incomplete targets first.")
    if np.ptp(x) == 0:
        raise StatsError(f"all {x.size} values are equal ({x.flat[0]:g}): no variance, so the ICC is undefined.")
    n, k = x.shape
    long = pd.DataFrame({"target": np.repeat(np.arange(n), k), "rater": np.tile(np.arange(k), n), "value": x.ravel()})
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings(), full_precision():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = pg.intraclass_corr(long, targets="target", raters="rater", ratings="value").set_index("Type")
    row3 = table.loc["ICC(C,1)"] if "ICC(C,1)" in table.index else table.loc["ICC3"]
    row2 = table.loc["ICC(A,1)"] if "ICC(A,1)" in table.index else table.loc["ICC2"]
    (l3, h3), (l2, h2) = _ci(row3), _ci(row2)
    note = ""
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    if np.allclose(residual, 0.0, atol=1e-12 * max(1.0, float(np.abs(x).max()))):
        note = "raters differ by a constant (residual variance 0): ICC CIs undefined"
        l3 = h3 = l2 = h2 = float("nan")
        log.warning("icc: %s", note)
    return IccResult(float(row3["ICC"]), l3, h3, float(row2["ICC"]), l2, h2, n, 0, note)


def icc(auto: Sequence[float], expert: Sequence[float], targets: Sequence | None = None) -> IccResult:
    """ICC(3,1) and ICC(2,1), 95 % CIs, of paired automated and expert values.

    ``targets`` (optional) names each pair (scan/class), only checked for length and
    uniqueness; pairs are matched by position. NaN pairs are dropped and counted.
    """
    a = np.asarray(auto, dtype=np.float64)
    if targets is not None:
        names = list(targets)
        if len(names) != a.size:
            raise StatsError(f"{len(names)} targets for {a.size} pairs: give one target id per pair.")
        if len(set(names)) != len(names):
            raise StatsError("target ids repeat: each pair (scan and class) must have a unique id.")
    a, e, dropped = paired_arrays(a, expert)
    result = icc_from_matrix(np.column_stack([a, e]))
    return IccResult(**{**asdict(result), "n_dropped": dropped})


# --------------------------------------------------------------------------- mixed model


@dataclass(frozen=True)
class MixedTostResult:
    """Linear mixed model value ~ source + (1 | subject): TOST of the source effect, ICC."""

    p: float
    p_lower: float
    p_upper: float
    margin: float
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    icc: float
    subject_var: float
    residual_var: float
    n_subjects: int
    n_obs: int
    converged: bool
    note: str = ""


OPTIMISERS: tuple[str | None, ...] = (None, "powell", "nm")
"""statsmodels' default (BFGS with its own retries), then two derivative-free optimisers."""


def _fit_random_intercept(frame: pd.DataFrame):
    """REML fit of ``y ~ auto + (1 | g)``: the best (highest finite REML log-likelihood) of
    several optimisers, because gradient optimisers can stop early near a zero subject
    variance. Returns the fit and notes on lasting problems (non-convergence, boundary)."""
    import statsmodels.formula.api as smf

    model = smf.mixedlm("y ~ auto", frame, groups=frame["g"])
    best, best_messages, errors = None, [], []
    for method in OPTIMISERS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fit = model.fit(reml=True, **({} if method is None else {"method": method}))
            except (np.linalg.LinAlgError, ValueError) as error:
                errors.append(f"{method or 'default'}: {error}")
                continue
        usable = np.isfinite(fit.llf) and np.isfinite(fit.bse_fe["auto"])
        if usable and (best is None or fit.llf > best.llf + 1e-9):
            best, best_messages = fit, sorted({str(w.message).split("\n")[0] for w in caught})
    if best is None:
        raise StatsError(
            f"mixed model could not be fitted ({'; '.join(errors) or 'no finite likelihood'}); "
            "check that subjects repeat and values vary."
        )
    noise = (
        "Maximum Likelihood optimization failed",
        "Retrying",
        "MixedLM optimization failed",
        "Gradient optimization failed",
    )
    notes = [m for m in best_messages if not m.startswith(noise)]
    if not best.converged:
        notes.insert(0, "optimiser did not converge")
    return best, notes


def _require_auto_and_expert(data: pd.DataFrame, source: str, model: str) -> None:
    """StatsError unless the ``source`` column holds exactly ``auto`` and ``expert``."""
    sources = set(data[source])
    if not {"auto", "expert"} <= sources or sources - {"auto", "expert"}:
        raise StatsError(f"{model}: {source} must hold exactly 'auto' and 'expert', found {sorted(map(str, sources))}.")


def _effect_tost(estimate: float, se: float, margin: float, alpha: float, dist) -> tuple[float, float, float]:
    """Two one-sided tests of an effect against ±margin with the test distribution ``dist`` (a frozen scipy
    distribution: normal for the mixed model's Wald tests, t for least squares): (p_lower, p_upper, CI half-width
    at level 1 − 2α)."""
    return (
        float(dist.sf((estimate + margin) / se)),
        float(dist.cdf((estimate - margin) / se)),
        float(dist.ppf(1 - alpha)) * se,
    )


def mixed_model_tost(
    table: pd.DataFrame,
    margin_fraction: float = 0.10,
    alpha: float = 0.05,
    subject: str = "subject",
    source: str = "source",
    value: str = "value",
) -> MixedTostResult:
    """Equivalence of automated vs expert values with repeated scans per subject.

    ``table`` is long: one row per value with columns ``subject``, ``source`` (``auto`` /
    ``expert``) and ``value``. Fits ``value ~ auto + (1 | subject)`` by REML (statsmodels
    MixedLM, values standardised for the optimiser and rescaled). The fixed effect of
    ``auto`` (= auto − expert) is tested against ±margin (margin = fraction × |expert mean|)
    with two one-sided Wald z-tests; CI at level 1 − 2α. ``icc`` = subject variance /
    (subject + residual variance). Rows with NaN values are dropped.

    Raises StatsError for fewer than 3 subjects, a missing source, no variance or a fit that
    fails or is singular (non-finite or zero SE). Non-convergence and boundary fits
    (subject variance 0) are returned with ``converged`` / ``note`` set.
    """
    missing = {subject, source, value} - set(table.columns)
    if missing:
        raise StatsError(f"mixed model: columns {sorted(missing)} missing; need {subject}, {source}, {value}.")
    data = table[[subject, source, value]].dropna()
    dropped = len(table) - len(data)
    if dropped:
        log.warning("mixed model: dropped %d rows with NaN", dropped)
    _require_auto_and_expert(data, source, "mixed model")
    n_subjects = data[subject].nunique()
    if n_subjects < MIN_SUBJECTS:
        raise StatsError(
            f"mixed model: {n_subjects} subjects; at least {MIN_SUBJECTS} are needed to estimate "
            "a between-subject variance."
        )
    y = data[value].to_numpy(dtype=np.float64)
    center, scale = float(y.mean()), float(y.std(ddof=1))
    if not scale > 0:
        raise StatsError("mixed model: all values are equal; nothing to model.")
    frame = pd.DataFrame(
        {
            "y": (y - center) / scale,
            "auto": (data[source] == "auto").to_numpy(dtype=float),
            "g": data[subject].astype(str).to_numpy(),
        }
    )
    margin = relative_margin(y[frame["auto"].to_numpy() == 0], margin_fraction)
    fit, notes = _fit_random_intercept(frame)
    estimate = float(fit.fe_params["auto"]) * scale
    se = float(fit.bse_fe["auto"]) * scale
    if not (np.isfinite(se) and se > 0):
        raise StatsError(
            "mixed model is singular (standard error of the source effect is not finite/positive); "
            "too few subjects or no variation between automated and expert values."
        )
    subject_var = float(fit.cov_re.iloc[0, 0]) * scale**2
    residual_var = float(fit.scale) * scale**2
    total = subject_var + residual_var
    p_lower, p_upper, half = _effect_tost(estimate, se, margin, alpha, sps.norm())
    if subject_var <= 1e-12 * total:
        notes.append("subject variance at 0 (boundary fit)")
    note = "; ".join(notes)
    if note:
        log.warning("mixed model: %s", note)
    return MixedTostResult(
        max(p_lower, p_upper),
        p_lower,
        p_upper,
        margin,
        estimate,
        se,
        estimate - half,
        estimate + half,
        subject_var / total if total > 0 else float("nan"),
        subject_var,
        residual_var,
        n_subjects,
        len(data),
        bool(fit.converged),
        note,
    )


def fixed_subject_tost(
    table: pd.DataFrame,
    margin_fraction: float = 0.10,
    alpha: float = 0.05,
    subject: str = "subject",
    source: str = "source",
    value: str = "value",
) -> MixedTostResult:
    """Equivalence with repeated scans per subject when subjects are too few for a random effect.

    Fits ``value ~ auto + C(subject)`` by least squares: each subject its own level, so the source
    effect (auto − expert) is estimated within subjects, as the mixed model does, but without a
    between-subject variance (which needs at least ``MIN_SUBJECTS``). The effect is tested against
    ±margin (margin = fraction × |expert mean|) with two one-sided t-tests on the residual degrees of
    freedom; CI at level 1 − 2α. ``icc``, ``subject_var`` are NaN (not estimable). Rows with NaN are
    dropped. Raises StatsError for a missing source, no residual degrees of freedom or no residual
    variance.
    """
    data = table[[subject, source, value]].dropna()
    _require_auto_and_expert(data, source, "fixed-subject model")
    y = data[value].to_numpy(dtype=np.float64)
    auto = (data[source] == "auto").to_numpy(dtype=float)
    levels = sorted(data[subject].astype(str).unique())
    codes = data[subject].astype(str).map({s: i for i, s in enumerate(levels)}).to_numpy()
    design = np.column_stack([np.ones_like(y), auto, *[(codes == i).astype(float) for i in range(1, len(levels))]])
    df = len(y) - design.shape[1]
    if df < 1:
        raise StatsError(f"fixed-subject model: {len(y)} values for {design.shape[1]} parameters; no residual left.")
    coef, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    if rank < design.shape[1]:
        raise StatsError("fixed-subject model is singular: the source effect cannot be told from the subjects.")
    residual_var = float(((y - design @ coef) ** 2).sum() / df)
    se = float(np.sqrt(residual_var * np.linalg.inv(design.T @ design)[1, 1]))
    if not se > 0:
        raise StatsError("fixed-subject model: no residual variance; automated and expert values differ exactly.")
    estimate = float(coef[1])
    margin = relative_margin(y[auto == 0], margin_fraction)
    p_lower, p_upper, half = _effect_tost(estimate, se, margin, alpha, sps.t(df))
    return MixedTostResult(
        max(p_lower, p_upper),
        p_lower,
        p_upper,
        margin,
        estimate,
        se,
        estimate - half,
        estimate + half,
        float("nan"),
        float("nan"),
        residual_var,
        len(levels),
        len(y),
        True,
        f"{len(levels)} subject(s), fewer than {MIN_SUBJECTS} for a between-subject variance: subject as a fixed "
        "effect (the source effect within subjects; no ICC)",
    )


# --------------------------------------------------------------------------- table


AGREEMENT_COLUMNS: tuple[str, ...] = (
    "measure",
    "group",
    "n",
    "n_dropped",
    "expert_mean",
    "icc",
    "icc_low",
    "icc_high",
    "icc2",
    "icc2_low",
    "icc2_high",
    "tost_p",
    "margin",
    "tost_ci_low",
    "tost_ci_high",
    "bias",
    "sd_diff",
    "loa_low",
    "loa_high",
    "smallest_margin",
    "n_subjects",
    "lmm_p",
    "lmm_estimate",
    "lmm_icc",
    "note",
)


def pair_measurements(measurements: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Wide table (dataset, case, class, measure, [subject], auto, expert) and the count of unpaired keys.

    ``class`` becomes a string. A key (dataset, case, class, measure) present for only one
    source keeps NaN for the other (dropped and counted later); a key repeated within one
    source raises StatsError.
    """
    required = set(KEYS) | {"source", "value"}
    missing = required - set(measurements.columns)
    if missing:
        raise StatsError(f"measurements table lacks columns {sorted(missing)}; expected {sorted(required)}.")
    data = measurements.copy()
    data["class"] = data["class"].astype(str)
    bad = set(data["source"]) - {"auto", "expert"}
    if bad:
        raise StatsError(f"source values {sorted(map(str, bad))} unknown; use 'auto' and 'expert'.")
    keys = list(KEYS) + (["subject"] if "subject" in data.columns else [])
    duplicated = data.duplicated(keys + ["source"], keep=False)
    if duplicated.any():
        first = data.loc[duplicated, keys + ["source"]].iloc[0].to_dict()
        raise StatsError(
            f"{int(duplicated.sum())} rows repeat a (dataset, case, class, measure, source), e.g. {first}; "
            "keep one value per scan, class, measure and source."
        )
    wide = data.set_index(keys + ["source"])["value"].astype(float).unstack("source")
    wide = wide.reindex(columns=["auto", "expert"]).reset_index()
    wide.columns.name = None
    present = data.groupby(keys)["source"].nunique()
    unpaired = int((present < 2).sum())
    if unpaired:
        log.warning("%d scan/class/measure keys have only one source; they count as dropped pairs", unpaired)
    return wide, unpaired


def _attach_subjects(wide: pd.DataFrame, subjects: Mapping | None) -> pd.DataFrame:
    """A ``subject_key`` column: (dataset, subject), from a column, a mapping or the case."""
    wide = wide.copy()
    if "subject" in wide.columns:
        subject = wide["subject"].astype(str)
    elif subjects is not None:
        subject = pd.Series(
            [subjects.get((d, c), subjects.get(c, c)) for d, c in zip(wide["dataset"], wide["case"])], index=wide.index
        ).astype(str)
    else:
        subject = wide["case"].astype(str)
    wide["subject_key"] = wide["dataset"].astype(str) + "/" + subject
    return wide


def _try(notes: list[str], what: str, function, *args, **kwargs):
    """Call a statistic; on StatsError record the message and return None."""
    try:
        return function(*args, **kwargs)
    except StatsError as error:
        message = str(error)
        notes.append(message if message.lower().startswith(what.lower()) else f"{what}: {message}")
        return None


def _group_row(pairs: pd.DataFrame, margin_fraction: float, alpha: float) -> dict:
    """One agreement row from the paired values of one measure × group."""
    notes: list[str] = []
    a, e = pairs["auto"].to_numpy(float), pairs["expert"].to_numpy(float)
    finite = np.isfinite(a) & np.isfinite(e)
    row: dict = {column: float("nan") for column in AGREEMENT_COLUMNS[2:-1]}
    row.update(
        n=int(finite.sum()),
        n_dropped=int((~finite).sum()),
        expert_mean=float(e[finite].mean()) if finite.any() else float("nan"),
    )
    if row["n_dropped"]:
        notes.append(f"{row['n_dropped']} pairs dropped (NaN or one source missing)")
    ratings = _try(notes, "ICC", icc, a, e)
    if ratings:
        row.update(
            icc=ratings.icc3,
            icc_low=ratings.icc3_low,
            icc_high=ratings.icc3_high,
            icc2=ratings.icc2,
            icc2_low=ratings.icc2_low,
            icc2_high=ratings.icc2_high,
        )
        if ratings.note:
            notes.append(f"ICC: {ratings.note}")
    tost = _try(notes, "TOST", tost_paired, a, e, margin_fraction, alpha)
    if tost:
        row.update(tost_p=tost.p, margin=tost.margin, tost_ci_low=tost.ci_low, tost_ci_high=tost.ci_high)
    ba = _try(notes, "Bland-Altman", bland_altman, a, e)
    if ba:
        row.update(bias=ba.bias, sd_diff=ba.sd, loa_low=ba.loa_low, loa_high=ba.loa_high)
    smallest = _try(notes, "smallest margin", smallest_equivalence_margin, a, e, alpha)
    if smallest is not None:
        row["smallest_margin"] = smallest
    complete = pairs[finite]
    values = complete.groupby("subject_key").size()  # both sides of a scan, and every scan of a subject
    row["n_subjects"] = int(values.size)
    if (values > 1).any():
        long = complete.melt(
            id_vars=["subject_key"], value_vars=["auto", "expert"], var_name="source", value_name="value"
        )
        model = mixed_model_tost if row["n_subjects"] >= MIN_SUBJECTS else fixed_subject_tost
        mixed = _try(notes, "mixed model", model, long, margin_fraction, alpha, subject="subject_key")
        if mixed:
            row.update(lmm_p=mixed.p, lmm_estimate=mixed.estimate, lmm_icc=mixed.icc)
            if mixed.note or not mixed.converged:
                notes.append(f"mixed model: {mixed.note or 'not converged'}")
    if row["n"] and row["n"] > row["n_subjects"]:
        notes.append(
            f"{row['n']} pairs from {row['n_subjects']} subjects: the paired TOST and ICC treat them as independent, "
            "the mixed model does not"
        )
    row["note"] = "; ".join(notes)
    return row


def agreement_table(
    measurements: pd.DataFrame,
    group_by: Mapping[str, str] | None = None,
    classes: Sequence[int | str] | None = (1, 2),
    by_class: bool = False,
    subjects: Mapping | None = None,
    margin_fraction: float = 0.10,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Agreement statistics per measure × group from the tidy measurements table.

    ``measurements`` has columns dataset, case, class, measure, source, value (and
    optionally ``subject``). Automated and expert values are paired per (dataset, case,
    class, measure). ``group_by`` maps each dataset to a group (e.g. MRI, CT, Dixon); None
    groups by dataset; a dataset missing from the mapping raises StatsError. ``classes``
    selects the classes pooled (compared as strings; default the two LPM classes; None =
    all). ``by_class=True`` adds a ``class`` column and one row per class.

    The mixed model runs where a subject has more than one value in a group (its right and left
    LPM, its repeated scans): a random intercept per subject keeps them from counting as
    independent observations. Subjects come
    from a ``subject`` column, else ``subjects`` (mapping (dataset, case) or case → subject),
    else each case is its own subject. Statistics that cannot be computed are NaN, with the
    reason in ``note``; one row per measure × group is always returned.
    """
    wide, _ = pair_measurements(measurements)
    if classes is not None:
        wanted = [str(c) for c in classes]
        absent = sorted(set(wanted) - set(wide["class"]))
        if len(absent) == len(wanted):
            raise StatsError(
                f"none of the classes {wanted} has paired measurements; classes present: {sorted(set(wide['class']))}."
            )
        if absent:
            log.warning("classes %s have no paired measurements", absent)
        wide = wide[wide["class"].isin(wanted)]
    if group_by is None:
        wide["group"] = wide["dataset"].astype(str)
    else:
        unmapped = sorted(set(wide["dataset"]) - set(group_by))
        if unmapped:
            raise StatsError(f"datasets {unmapped} have no group in group_by; add them to the mapping.")
        wide["group"] = wide["dataset"].map(group_by)
    wide = _attach_subjects(wide, subjects)
    group_keys = ["measure", "group"] + (["class"] if by_class else [])
    rows = []
    for key, pairs in wide.groupby(group_keys, sort=True):
        row = dict(zip(group_keys, key))
        row.update(_group_row(pairs, margin_fraction, alpha))
        rows.append(row)
    columns = list(AGREEMENT_COLUMNS[:2]) + (["class"] if by_class else []) + list(AGREEMENT_COLUMNS[2:])
    return pd.DataFrame(rows, columns=columns)
