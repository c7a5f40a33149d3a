"""Agreement statistics against independent computations (Shrout & Fleiss formulas, scipy
one-sided t-tests, Bland–Altman by hand) and their degenerate-input semantics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from nnsam2_utils.evaluate.statistics import (
    StatsError,
    agreement_table,
    bland_altman,
    icc,
    icc_from_matrix,
    mixed_model_tost,
    smallest_equivalence_margin,
    tost_paired,
)

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)


def anova_icc(x: np.ndarray, alpha: float = 0.05) -> dict:
    """Own two-way ANOVA ICC(3,1) and ICC(2,1) with CIs (Shrout & Fleiss 1979; McGraw & Wong 1996)."""
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    bms, jms, ems = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    icc3 = (bms - ems) / (bms + (k - 1) * ems)
    icc2 = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
    df1, df2 = n - 1, (n - 1) * (k - 1)
    f0 = bms / ems
    fl = f0 / sps.f.ppf(1 - alpha / 2, df1, df2)
    fu = f0 * sps.f.ppf(1 - alpha / 2, df2, df1)
    fj = jms / ems
    a, b = k * icc2 / (n * (1 - icc2)), 1 + k * icc2 * (n - 1) / (n * (1 - icc2))
    v = (a * jms + b * ems) ** 2 / ((a * jms) ** 2 / (k - 1) + (b * ems) ** 2 / df2)
    fs, fss = sps.f.ppf(1 - alpha / 2, n - 1, v), sps.f.ppf(1 - alpha / 2, v, n - 1)
    low2 = n * (bms - fs * ems) / (fs * (k * jms + (k * n - k - n) * ems) + n * bms)
    high2 = n * (fss * bms - ems) / (k * jms + (k * n - k - n) * ems + n * fss * bms)
    del fj
    return {
        "icc3": icc3,
        "icc3_low": (fl - 1) / (fl + k - 1),
        "icc3_high": (fu - 1) / (fu + k - 1),
        "icc2": icc2,
        "icc2_low": low2,
        "icc2_high": high2,
    }


@pytest.fixture
def pairs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    expert = rng.normal(150.0, 30.0, 25)
    auto = expert * 1.02 + rng.normal(0.0, 6.0, 25)
    return auto, expert


# ----------------------------------------------------------------------------- ICC


def test_icc_shrout_fleiss_table():
    own = anova_icc(SHROUT_FLEISS)
    assert round(own["icc3"], 2) == 0.71 and round(own["icc2"], 2) == 0.29  # published values
    got = icc_from_matrix(SHROUT_FLEISS)
    for key, value in own.items():
        assert getattr(got, key) == pytest.approx(value, rel=1e-9), key


def test_icc_two_raters_matches_own_anova(pairs):
    auto, expert = pairs
    got = icc(auto, expert, targets=[f"case{i}" for i in range(auto.size)])
    own = anova_icc(np.column_stack([auto, expert]))
    for key, value in own.items():
        assert getattr(got, key) == pytest.approx(value, rel=1e-9), key
    assert got.icc3_low < got.icc3 < got.icc3_high and got.n == 25 and got.note == ""


def test_icc_degenerate_inputs(pairs):
    auto, expert = pairs
    with pytest.raises(StatsError, match="no variance"):
        icc([5.0] * 4, [5.0] * 4)
    with pytest.raises(ValueError, match="at least 3"):  # StatsError is a ValueError
        icc([1.0, 2.0], [1.5, 2.5])
    with pytest.raises(StatsError, match="targets"):
        icc(auto, expert, targets=["a"] * 3)
    offset = icc(expert + 5.0, expert)  # constant offset: consistency 1, CIs undefined
    assert offset.icc3 == pytest.approx(1.0) and offset.icc2 < 1.0
    assert math.isnan(offset.icc3_low) and "constant" in offset.note
    with_nan = icc(np.append(auto, np.nan), np.append(expert, 1.0))
    assert with_nan.n_dropped == 1 and with_nan.icc3 == pytest.approx(icc(auto, expert).icc3)


# ----------------------------------------------------------------------------- TOST


def test_tost_matches_scipy_one_sided_tests(pairs):
    auto, expert = pairs
    result = tost_paired(auto, expert, margin_fraction=0.10)
    d = auto - expert
    margin = 0.10 * expert.mean()
    p_low = sps.ttest_1samp(d, -margin, alternative="greater").pvalue
    p_high = sps.ttest_1samp(d, margin, alternative="less").pvalue
    assert result.margin == pytest.approx(margin)
    assert result.p_lower == pytest.approx(p_low, rel=1e-9)
    assert result.p_upper == pytest.approx(p_high, rel=1e-9)
    assert result.p == pytest.approx(max(p_low, p_high), rel=1e-9)  # pingouin's value
    half = sps.t.ppf(0.95, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    assert (result.ci_low, result.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    # p < α exactly when the 90 % CI lies inside (−margin, margin)
    for fraction in (0.005, 0.01, 0.02, 0.05, 0.1):
        r = tost_paired(auto, expert, fraction)
        assert (r.p < 0.05) == (-r.margin < r.ci_low and r.ci_high < r.margin)


def test_tost_not_equivalent_with_large_bias_and_negative_mean(pairs):
    auto, expert = pairs
    assert tost_paired(auto * 1.3, expert).p > 0.5
    hu = tost_paired(-auto, -expert)  # negative means (e.g. fatty HU): margin from |mean|
    assert hu.margin == pytest.approx(0.1 * expert.mean()) and hu.p == pytest.approx(tost_paired(auto, expert).p)


def test_tost_degenerate_inputs(pairs):
    auto, expert = pairs
    perfect = tost_paired(expert, expert)
    assert perfect.p == 0.0 and perfect.ci_low == perfect.ci_high == 0.0
    assert tost_paired(expert + 1000.0, expert).p == 1.0
    with pytest.raises(StatsError, match="at least 3"):
        tost_paired([1.0, 2.0], [1.0, 2.1])
    with pytest.raises(StatsError, match="same order"):
        tost_paired(auto, expert[:-1])
    with pytest.raises(StatsError, match="expert mean is 0"):
        tost_paired([1.0, -1.0, 0.5, -0.5], [1.0, -1.0, 1.0, -1.0])
    with_nan = tost_paired(np.append(auto, [np.nan, 1.0]), np.append(expert, [2.0, np.nan]))
    assert with_nan.n_dropped == 2 and with_nan.p == pytest.approx(tost_paired(auto, expert).p)
    with pytest.raises(StatsError, match="0 complete pairs"):
        tost_paired([np.nan] * 3, [1.0] * 3)


def test_smallest_margin_closed_form_matches_search(pairs):
    auto, expert = pairs
    closed = smallest_equivalence_margin(auto, expert)
    low, high = 0.0, 1.0  # bisection on the TOST p-value
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if tost_paired(auto, expert, mid).p < 0.05 else (mid, high)
    assert closed == pytest.approx(high, rel=1e-6)
    assert tost_paired(auto, expert, closed * 1.001).p < 0.05 <= tost_paired(auto, expert, closed * 0.999).p


# ----------------------------------------------------------------------------- Bland–Altman


def test_bland_altman_by_hand():
    result = bland_altman([10.0, 12.0, 14.0, 16.0], [11.0, 11.0, 15.0, 14.0])
    # d = [-1, 1, -1, 2]: mean 0.25, SS = 6.75, SD = sqrt(6.75 / 3) = 1.5
    assert result.bias == pytest.approx(0.25) and result.sd == pytest.approx(1.5)
    assert result.loa_low == pytest.approx(0.25 - 2.94) and result.loa_high == pytest.approx(0.25 + 2.94)
    constant = bland_altman([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert constant.sd == 0.0 and constant.loa_low == constant.loa_high == 1.0


# ----------------------------------------------------------------------------- mixed model


def _long(auto: np.ndarray, expert: np.ndarray, subjects) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject": list(subjects) * 2,
            "source": ["auto"] * len(auto) + ["expert"] * len(expert),
            "value": np.concatenate([auto, expert]),
        }
    )


def test_mixed_model_one_scan_per_subject_reduces_to_paired_analysis(pairs):
    auto, expert = pairs
    result = mixed_model_tost(_long(auto, expert, range(auto.size)))
    d = auto - expert
    # balanced REML with a positive subject variance: effect = mean difference,
    # SE = SD(d)/√n and the variance-component ICC = ICC(3,1)
    assert result.estimate == pytest.approx(d.mean(), rel=1e-6)
    assert result.se == pytest.approx(d.std(ddof=1) / math.sqrt(d.size), rel=1e-3)
    assert result.icc == pytest.approx(anova_icc(np.column_stack([auto, expert]))["icc3"], rel=1e-3)
    z_low, z_high = (result.estimate + result.margin) / result.se, (result.estimate - result.margin) / result.se
    assert result.p == pytest.approx(max(sps.norm.sf(z_low), sps.norm.cdf(z_high)))
    assert result.margin == pytest.approx(0.1 * expert.mean()) and result.n_subjects == 25


def test_mixed_model_repeated_scans():
    rng = np.random.default_rng(3)
    subjects = np.repeat(np.arange(12), 3)  # 12 subjects × 3 time points
    expert = rng.normal(200.0, 40.0, 12)[subjects] + rng.normal(0.0, 8.0, subjects.size)
    auto = expert + 2.0 + rng.normal(0.0, 3.0, subjects.size)
    result = mixed_model_tost(_long(auto, expert, subjects))
    assert result.n_subjects == 12 and result.n_obs == 72 and result.converged
    assert abs(result.estimate - 2.0) < 3 * result.se
    assert result.p < 0.05 and 0.8 < result.icc < 1.0
    # balanced design: REML = ANOVA estimates (interior solution), computed independently
    y = np.concatenate([auto, expert])
    g = np.concatenate([subjects, subjects])
    x = np.concatenate([np.ones_like(auto), np.zeros_like(expert)])
    n, m = 12, 6  # subjects, values per subject
    within = y - pd.Series(y).groupby(g).transform("mean").to_numpy()
    beta = (auto - expert).mean()
    residual_var = ((within**2).sum() - beta**2 * ((x - 0.5) ** 2).sum()) / (y.size - n - 1)
    between = m * ((pd.Series(y).groupby(g).mean() - y.mean()) ** 2).sum() / (n - 1)
    subject_var = (between - residual_var) / m
    assert result.estimate == pytest.approx(beta, rel=1e-6)
    assert result.residual_var == pytest.approx(residual_var, rel=1e-3)
    assert result.subject_var == pytest.approx(subject_var, rel=1e-3)
    assert result.se == pytest.approx(math.sqrt(2 * residual_var / (n * 3)), rel=1e-3)
    assert result.icc == pytest.approx(subject_var / (subject_var + residual_var), rel=1e-3)


def test_mixed_model_degenerate_inputs(pairs):
    auto, expert = pairs
    with pytest.raises(StatsError, match="at least 3"):
        mixed_model_tost(_long(auto[:4], expert[:4], [0, 0, 1, 1]))
    table = _long(auto, expert, range(auto.size))
    with pytest.raises(StatsError, match="'auto' and 'expert'"):
        mixed_model_tost(table[table["source"] == "auto"])
    with pytest.raises(StatsError, match="missing"):
        mixed_model_tost(table.rename(columns={"subject": "patient"}))
    with pytest.raises(StatsError, match="equal"):
        mixed_model_tost(_long(np.ones(5), np.ones(5), range(5)))
    rng = np.random.default_rng(7)  # no between-subject variance: boundary fit, reported in note
    flat_expert = rng.normal(100.0, 1.0, 30)
    boundary = mixed_model_tost(
        _long(flat_expert + rng.normal(0.0, 10.0, 30), flat_expert, np.repeat(np.arange(10), 3))
    )
    assert boundary.icc == pytest.approx(0.0, abs=1e-6) and "boundary" in boundary.note


# ----------------------------------------------------------------------------- table


def _measurements(rng, datasets=("t2", "ct"), cases=8, repeats=1) -> pd.DataFrame:
    rows = []
    for dataset in datasets:
        for case in range(cases):
            base = rng.normal(300.0, 60.0)
            for repeat in range(repeats):
                for cls in (1, 2, "R-ES"):
                    expert = base + rng.normal(0.0, 10.0) + (0 if cls != "R-ES" else -150)
                    auto = expert * 1.01 + rng.normal(0.0, 4.0)
                    for source, value in (("auto", auto), ("expert", expert)):
                        rows.append(
                            {
                                "dataset": dataset,
                                "case": f"c{case}_{repeat}",
                                "subject": f"s{case}",
                                "class": cls,
                                "measure": "volume_ml",
                                "source": source,
                                "value": value,
                            }
                        )
    return pd.DataFrame(rows)


def test_agreement_table_matches_direct_calls():
    table = _measurements(np.random.default_rng(1)).drop(columns="subject")
    out = agreement_table(table, {"t2": "MRI", "ct": "CT"})
    assert list(out[["measure", "group"]].itertuples(index=False, name=None)) == [
        ("volume_ml", "CT"),
        ("volume_ml", "MRI"),
    ]
    required = [
        "measure",
        "group",
        "n",
        "icc",
        "icc_low",
        "icc_high",
        "icc2",
        "icc2_low",
        "icc2_high",
        "tost_p",
        "margin",
        "bias",
        "loa_low",
        "loa_high",
        "smallest_margin",
        "lmm_p",
        "lmm_icc",
        "note",
    ]
    assert set(required) <= set(out.columns)
    wide = table[table["dataset"] == "t2"].pivot_table(index=["case", "class"], columns="source", values="value")
    wide = wide[wide.index.get_level_values("class").isin([1, 2])]
    mri = out.set_index("group").loc["MRI"]
    assert mri["n"] == 16 and mri["icc"] == pytest.approx(icc(wide["auto"], wide["expert"]).icc3)
    assert mri["tost_p"] == pytest.approx(tost_paired(wide["auto"], wide["expert"]).p)
    assert mri["loa_high"] == pytest.approx(bland_altman(wide["auto"], wide["expert"]).loa_high)
    assert mri["smallest_margin"] == pytest.approx(smallest_equivalence_margin(wide["auto"], wide["expert"]))
    # both sides of each of 8 scans: 16 pairs from 8 subjects, so the mixed model runs and the note says why
    assert mri["n_subjects"] == 8 and np.isfinite(mri["lmm_p"])
    assert "16 pairs from 8 subjects" in mri["note"] and "mixed model: mixed model" not in mri["note"]
    by_class = agreement_table(table, None, classes=(1, 2, "R-ES"), by_class=True)
    assert (
        len(by_class) == 6 and set(by_class["class"]) == {"1", "2", "R-ES"} and set(by_class["group"]) == {"t2", "ct"}
    )


def test_agreement_table_csv_round_trip_and_mixed_model(tmp_path):
    table = _measurements(np.random.default_rng(2), datasets=("dixon",), cases=6, repeats=3)
    path = tmp_path / "measurements.csv"
    table.to_csv(path, index=False)
    direct = agreement_table(table, {"dixon": "Dixon"})
    reread = agreement_table(pd.read_csv(path), {"dixon": "Dixon"})  # class comes back as "1", "2"
    pd.testing.assert_frame_equal(direct, reread)
    row = direct.iloc[0]
    assert row["n"] == 36 and row["n_subjects"] == 6 and np.isfinite(row["lmm_p"]) and 0 <= row["lmm_icc"] <= 1
    mapped = agreement_table(
        table.drop(columns="subject"),
        {"dixon": "Dixon"},
        subjects={f"c{c}_{r}": f"s{c}" for c in range(6) for r in range(3)},
    )
    assert mapped.iloc[0]["lmm_p"] == pytest.approx(row["lmm_p"])


def test_agreement_table_degenerate_groups():
    rng = np.random.default_rng(4)
    table = _measurements(rng, datasets=("a",), cases=6).drop(columns="subject")
    flat = table[table["dataset"] == "a"].assign(dataset="flat", value=5.0)  # zero variance
    tiny = table[(table["dataset"] == "a") & (table["case"] == "c0_0")].assign(dataset="tiny")  # 2 pairs
    out = agreement_table(pd.concat([table, flat, tiny]), {"a": "A", "flat": "F", "tiny": "T"}).set_index("group")
    assert np.isfinite(out.loc["A", "icc"]) and out.loc["A", "note"].startswith("12 pairs from 6 subjects")
    assert math.isnan(out.loc["F", "icc"]) and "no variance" in out.loc["F", "note"]
    assert out.loc["F", "tost_p"] == 0.0 and out.loc["F", "bias"] == 0.0  # identical values: equivalent
    assert out.loc["T", "n"] == 2 and math.isnan(out.loc["T", "tost_p"]) and "at least 3" in out.loc["T", "note"]
    # NaN values and a missing expert value are dropped and counted
    holes = table.copy()
    holes.loc[holes.index[0], "value"] = np.nan
    holes = holes.drop(index=holes.index[(holes["source"] == "expert")][:1])
    with_holes = agreement_table(holes, {"a": "A"}).iloc[0]
    assert with_holes["n_dropped"] == 1 and with_holes["n"] == 11 and "dropped" in with_holes["note"]
    with pytest.raises(StatsError, match="none of the classes"):
        agreement_table(table, {"a": "A"}, classes=(3,))
    with pytest.raises(StatsError, match="no group"):
        agreement_table(table, {"b": "B"})
    with pytest.raises(StatsError, match="repeat"):
        agreement_table(pd.concat([table, table]), {"a": "A"})
    with pytest.raises(StatsError, match="lacks columns"):
        agreement_table(table.drop(columns="source"), {"a": "A"})


def test_two_subjects_get_a_fixed_subject_model_with_a_number_not_nan():
    from scipy import stats as sps

    from nnsam2_utils.evaluate.statistics import fixed_subject_tost

    # per subject: auto = expert + 1 exactly in the mean, ±1 around it
    rows = [("A", "expert", 10), ("A", "expert", 12), ("A", "auto", 11), ("A", "auto", 13)]
    rows += [("B", "expert", 20), ("B", "expert", 22), ("B", "auto", 21), ("B", "auto", 23)]
    table = pd.DataFrame(rows, columns=["subject", "source", "value"])
    result = fixed_subject_tost(table, margin_fraction=0.10)
    # RSS 8 on 8 − 3 = 5 df → variance 1.6; balanced: se² = 1.6 × (1/4 + 1/4) = 0.8; margin 0.1 × 16
    assert result.estimate == pytest.approx(1.0)
    assert result.residual_var == pytest.approx(1.6)
    assert result.se == pytest.approx(np.sqrt(0.8))
    assert result.margin == pytest.approx(1.6)
    assert result.p == pytest.approx(sps.t.cdf((1.0 - 1.6) / np.sqrt(0.8), 5))
    assert result.ci_low == pytest.approx(1.0 - sps.t.ppf(0.95, 5) * np.sqrt(0.8))
    assert np.isnan(result.icc) and result.n_subjects == 2 and "fixed effect" in result.note


def test_the_fixed_subject_model_agrees_with_statsmodels_ols():
    import statsmodels.formula.api as smf

    from nnsam2_utils.evaluate.statistics import fixed_subject_tost

    rng = np.random.default_rng(3)
    subjects = np.repeat(["s1", "s2"], 6)
    expert = rng.normal(100, 10, 12) + np.where(subjects == "s1", 0, 30)
    auto = expert + 4 + rng.normal(0, 2, 12)
    table = pd.DataFrame(
        {"subject": np.tile(subjects, 2), "source": ["expert"] * 12 + ["auto"] * 12, "value": [*expert, *auto]}
    )
    ours = fixed_subject_tost(table)
    fit = smf.ols("value ~ C(source, Treatment('expert')) + C(subject)", table).fit()
    name = "C(source, Treatment('expert'))[T.auto]"
    assert ours.estimate == pytest.approx(fit.params[name])
    assert ours.se == pytest.approx(fit.bse[name])
    assert ours.residual_var == pytest.approx(fit.scale)


def test_an_agreement_row_of_two_subjects_has_a_mixed_model_p_value():
    from nnsam2_utils.evaluate.statistics import agreement_table

    rng = np.random.default_rng(0)
    rows = []
    for subject in ("s1", "s2"):
        for timepoint in range(3):
            case = f"{subject}_{timepoint}"
            for cls in (1, 2):
                truth = rng.normal(100, 10)
                rows += [
                    {
                        "dataset": "d",
                        "case": case,
                        "class": cls,
                        "measure": "volume_ml",
                        "source": "expert",
                        "value": truth,
                    },
                    {
                        "dataset": "d",
                        "case": case,
                        "class": cls,
                        "measure": "volume_ml",
                        "source": "auto",
                        "value": truth * 1.01 + rng.normal(0, 1),
                    },
                ]
    table = agreement_table(
        pd.DataFrame(rows), subjects={("d", f"s{s}_{t}"): f"s{s}" for s in (1, 2) for t in range(3)}
    )
    row = table.iloc[0]
    assert np.isfinite(row.lmm_p) and row.lmm_p < 0.05  # a 1 % bias inside a 10 % margin
    assert "fixed effect" in row.note and np.isnan(row.lmm_icc)
