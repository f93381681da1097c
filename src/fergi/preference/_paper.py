"""Tables 1 and 2 of the paper and the FAU-Net results, computed as the published code did.

The rules (release README, "Exact rules of the published computation"):

* ensemble weights and AUcomb parameters are fitted per leave-one-participant-out fold;
* Table 1 counts every score on the held-out pairs that the fold's AUcomb model selected;
* for Table 2 and the integration, every image's AUcomb score uses the (k, w_AU4) of the fold
  where its own participant was held out, and its ensemble score uses its own participant's
  fold weights applied to the current fold's z-scores;
* the published code scored Table 2 with ``w_AU4 s_AU12 s_AU4 + w_AU12 s_AU12`` instead of
  eq. 5; both variants are computed.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.preference._aucomb import AU4, AU12, AUcombValence, aucomb_scores
from fergi.preference._coverage import coverage_curve
from fergi.preference._ensemble import ENSEMBLE_COLUMNS, weighted_sum, zscore_stats
from fergi.preference._faunet import FAUNet
from fergi.preference._grids import ENSEMBLE_GRID, INTEGRATION_GRID
from fergi.preference._pairs import correct_mask, count, pair_index, require_columns

logger = logging.getLogger(__name__)

# Paper names -> release columns, in the order of the tables.
BASELINES = {
    "CLIP": "CLIP_score",
    "Aesthetic": "Aesthetic_score",
    "BLIP": "BLIP_score",
    "ImageReward": "ImageReward_score",
    "PickScore": "PickScore",
    "HPSv2": "HPS_V2_score",
}
INTEGRATED = ("ImageReward", "PickScore", "HPSv2", "Ensemble")
# Column stems of the published per-participant CSVs.
_PUBLISHED_STEM = {**BASELINES, "Ensemble": "ensemble_baseline_score"}
_INTEGRATION_STEM = {"ImageReward": "ensemble_ImageReward_{}_score", "PickScore": "ensemble_PickScore_{}_score",
                     "HPSv2": "ensemble_HPS_V2_{}_score", "Ensemble": "ensemble_all_score"}

DISCREPANCY = (
    "Table 2 'published' = the authors' code, which scored AUcomb as w_AU4*s_AU12*s_AU4 + "
    "w_AU12*s_AU12; 'eq. 5' = the formula as the paper writes it (w_AU4*s_AU4 + w_AU12*s_AU12)."
)
STRICT_NOTE = (
    "'strict' = eq. 5 with everything refitted inside each fold: the published procedure scores "
    "the training participants with AUcomb and ensemble weights from folds that contained the "
    "held-out participant; strict LOPO scores every image with the held-out fold's own fits."
)
PUBLISHED = {
    "table1": {"CLIP": 58.25, "Aesthetic": 51.39, "BLIP": 49.78, "ImageReward": 62.19,
               "PickScore": 61.31, "HPSv2": 62.04, "Ensemble": 66.57, "AUcomb": 72.70},
    "table2_independent": {"CLIP": 57.50, "Aesthetic": 49.92, "BLIP": 49.92, "AUcomb": 58.23,
                           "ImageReward": 60.44, "PickScore": 63.36, "HPSv2": 61.94, "Ensemble": 65.79},
    "table2_with_aus": {"ImageReward": 63.67, "PickScore": 65.42, "HPSv2": 65.53, "Ensemble": 67.49},
    "faunet": {"independent": 59.35, "ensemble": 65.80, "ensemble_with_faunet": 68.64},
}


def _pct(n_ok, n_bad) -> float:
    n_ok, n_bad = int(np.sum(n_ok)), int(np.sum(n_bad))
    return round(100.0 * n_ok / (n_ok + n_bad), 2) if n_ok + n_bad else float("nan")


class _Data:
    """The image table of the included participants as arrays, with its pairs."""

    def __init__(self, table: pd.DataFrame, participants):
        require_columns(table, ("participant", "session", "image", "rank_score", AU4, AU12,
                                *BASELINES.values()))
        t = table[table["participant"].astype(str).isin(participants)]
        t = t.sort_values(["participant", "session", "image"], kind="stable").reset_index(drop=True)
        self.table = t
        self.pairs = pair_index(t)
        self.labels = self.pairs.group_labels
        self.n_groups = len(self.labels)
        self.image_group = pd.Categorical(t["participant"].astype(str), categories=self.labels).codes.astype(np.int64)
        self.raw = {name: t[col].to_numpy(dtype=float) for name, col in BASELINES.items()}
        self.ens_raw = t[list(ENSEMBLE_COLUMNS)].to_numpy(dtype=float)
        self.n_pairs_per_group = np.bincount(self.pairs.group, minlength=self.n_groups)
        # Pairs come out grouped by participant (the table is sorted): one slice per fold.
        if np.any(np.diff(self.pairs.group) < 0):
            raise AssertionError("pairs are not grouped by participant")
        ends = np.cumsum(self.n_pairs_per_group)
        self.bounds = [(int(e - n), int(e)) for e, n in zip(ends, self.n_pairs_per_group, strict=True)]
        if len(self.pairs) == 0:
            raise FergiError("image table: no pair of ranked images (are the rankings missing?)")
        empty = [str(label) for label, n in zip(self.labels, self.n_pairs_per_group, strict=True) if n == 0]
        if empty:
            logger.warning("participant(s) %s: no pair of ranked images, nothing to test on", ", ".join(empty))
        missing = [c for c in BASELINES.values() if t[c].isna().any()]
        if missing:
            logger.warning("baseline score(s) %s missing for some images: those pairs count as wrong",
                           ", ".join(missing))

    def fold_z(self, g: int, values: np.ndarray) -> np.ndarray:
        """``values`` z-scored with the mean and std (ddof=1) of the images not in group ``g``."""
        mean, std = zscore_stats(values, self.image_group != g)
        return (values - mean) / std


def _fold_counts(ok: np.ndarray, bounds: tuple[int, int]):
    """Training (all but the slice) and held-out (the slice) correct counts per grid row."""
    lo, hi = bounds
    held = ok[:, lo:hi].sum(axis=1)
    return ok.sum(axis=1) - held, held


def _ensemble_folds(data: _Data, grid=ENSEMBLE_GRID):
    """Per-fold ensemble weights and held-out counts (the published first loop)."""
    grid = np.asarray(grid, dtype=float)
    pairs = data.pairs
    weights = np.empty((data.n_groups, grid.shape[1]))
    test_ok = np.empty(data.n_groups, np.int64)
    for g in range(data.n_groups):
        z = data.fold_z(g, data.ens_raw)
        ok = correct_mask(weighted_sum(z[pairs.a], grid) - weighted_sum(z[pairs.b], grid), pairs.sign)
        train_ok, held_ok = _fold_counts(ok, data.bounds[g])
        best = int(np.argmax(train_ok))
        weights[g] = grid[best]
        test_ok[g] = held_ok[best]
    return weights, test_ok, data.n_pairs_per_group - test_ok


def _integration_folds(data: _Data, valence, image_weights, a_grid):
    """Per-fold integration weight and held-out counts for every integrated score.

    ``valence`` (per-image scores) and ``image_weights`` (per-image ensemble weights) are
    arrays, as in the published procedure, or functions of the fold ``g`` returning them
    (the strict procedure: everything from fold ``g``'s own fits).
    """
    pairs = data.pairs
    a = np.asarray(a_grid, dtype=float)
    out = {name: {"a": np.empty(data.n_groups), "ok": np.empty(data.n_groups, np.int64),
                  "bad": np.empty(data.n_groups, np.int64)} for name in INTEGRATED}
    cols = {"ImageReward": 0, "PickScore": 1, "HPSv2": 2}
    for g in range(data.n_groups):
        v = valence(g) if callable(valence) else valence
        # (base_a + a * v_a) - (base_b + a * v_b), evaluated in the published order.
        av_a, av_b = a[:, None] * v[pairs.a], a[:, None] * v[pairs.b]
        w = image_weights(g) if callable(image_weights) else image_weights
        z = data.fold_z(g, data.ens_raw)
        bases = {name: z[:, c] for name, c in cols.items()}
        # Published code: each image's own participant's fold weights on this fold's z-scores.
        ens = w[:, 0] * z[:, 0]
        for c in range(1, z.shape[1]):
            ens = ens + w[:, c] * z[:, c]
        bases["Ensemble"] = ens
        for name in INTEGRATED:
            base = bases[name]
            ok = correct_mask((base[pairs.a] + av_a) - (base[pairs.b] + av_b), pairs.sign)
            train_ok, held_ok = _fold_counts(ok, data.bounds[g])
            best = int(np.argmax(train_ok))
            out[name]["a"][g] = a[best]
            out[name]["ok"][g] = held_ok[best]
            out[name]["bad"][g] = data.n_pairs_per_group[g] - held_ok[best]
    return out


def _out_of_fold_integrated(data: _Data, valence, image_weights, a_per_group):
    """Every image's ensemble + a * valence score from its own participant's fold."""
    scores = np.empty(len(data.table))
    for g in range(data.n_groups):
        rows = data.image_group == g
        z = data.fold_z(g, data.ens_raw)[rows]
        w = image_weights[rows]
        ens = w[:, 0] * z[:, 0]
        for c in range(1, z.shape[1]):
            ens = ens + w[:, c] * z[:, c]
        scores[rows] = ens + a_per_group[g] * valence[rows]
    return scores


def aucomb_tables(table: pd.DataFrame, participants, *, a_grid=INTEGRATION_GRID, model=None):
    """Tables 1 and 2 (both formulas), per-participant counts and coverage curves."""
    data = _Data(table, participants)
    pairs, G = data.pairs, data.n_groups
    t = data.table
    per = pd.DataFrame({"user_id": data.labels})

    weights, ens_ok, ens_bad = _ensemble_folds(data)
    per["ImageReward_weight"], per["PickScore_weight"], per["HPS_V2_weight"] = weights.T
    per["ensemble_baseline_score_n_correct"], per["ensemble_baseline_score_n_incorrect"] = ens_ok, ens_bad

    model = AUcombValence() if model is None else model
    fits = model._lopo_fit(t, None, pairs)
    fit_list = [fits[label] for label in data.labels]
    per["exp_decay_coef"] = [m.k_ for m in fit_list]
    per["AU4_coef"] = [m.w_au4_ for m in fit_list]
    per["AU12_coef"] = [1 - m.w_au4_ for m in fit_list]
    per["diff_threshold"] = [m.threshold_ for m in fit_list]

    # Table 1: every score on the held-out pairs the fold's AUcomb model selected.
    au4, au12 = t[AU4].to_numpy(float), t[AU12].to_numpy(float)
    sel_counts = {name: ([], []) for name in [*BASELINES, "Ensemble", "AUcomb"]}
    n_selected = 0
    for g, m in enumerate(fit_list):
        rows = pairs.group == g
        gp = pairs.subset(rows)
        s = aucomb_scores(au4, au12, m.k_, m.w_au4_, "paper")
        d = s[gp.a] - s[gp.b]
        sel = np.abs(d) >= m.threshold_
        sp = gp.subset(sel)
        n_selected += int(sel.sum())
        diffs = {"AUcomb": d[sel]}
        for name in BASELINES:
            z = data.fold_z(g, data.raw[name][:, None])[:, 0]
            diffs[name] = z[sp.a] - z[sp.b]
        ens = weighted_sum(data.fold_z(g, data.ens_raw), weights[g])
        diffs["Ensemble"] = ens[sp.a] - ens[sp.b]
        for name, diff in diffs.items():
            ok, bad = count(diff, sp.sign)
            sel_counts[name][0].append(ok)
            sel_counts[name][1].append(bad)
    for name, (ok, bad) in sel_counts.items():
        stem = "AUcomb_valence_score" if name == "AUcomb" else _PUBLISHED_STEM[name]
        per[f"AUcomb_selected_{stem}_n_correct"] = ok
        per[f"AUcomb_selected_{stem}_n_incorrect"] = bad
    table1 = {"n_pairs": len(pairs), "n_selected": n_selected,
              "accuracy": {name: _pct(ok, bad) for name, (ok, bad) in sel_counts.items()}}
    table1["accuracy"] = {k: table1["accuracy"][k] for k in [*BASELINES, "Ensemble", "AUcomb"]}
    table1["selected_percent"] = round(100.0 * n_selected / len(pairs), 2)

    # Per-image parameters from the fold where the image's participant was held out.
    k_img = np.array([m.k_ for m in fit_list])[data.image_group]
    w_img = np.array([m.w_au4_ for m in fit_list])[data.image_group]
    image_weights = weights[data.image_group]

    independent_counts = {}
    for name in BASELINES:
        independent_counts[name] = count(data.raw[name][pairs.a] - data.raw[name][pairs.b], pairs.sign, pairs.group, G)
    independent_counts["Ensemble"] = (ens_ok, ens_bad)
    for name in BASELINES:
        per[f"{BASELINES[name]}_n_correct"], per[f"{BASELINES[name]}_n_incorrect"] = independent_counts[name]

    tables2, valences, integrations = {}, {}, {}
    for formula in ("published_code", "paper"):
        v = aucomb_scores(au4, au12, k_img, w_img, formula)
        valences[formula] = v
        counts = dict(independent_counts)
        counts["AUcomb"] = count(v[pairs.a] - v[pairs.b], pairs.sign, pairs.group, G)
        integ = _integration_folds(data, v, image_weights, a_grid)
        integrations[formula] = integ
        order = ["CLIP", "Aesthetic", "BLIP", "AUcomb", "ImageReward", "PickScore", "HPSv2", "Ensemble"]
        # Strict LOPO: fold g's own (k, w_AU4) and ensemble weights score every image, so
        # the held-out participant never shaped the training rows' scores.
        strict = _integration_folds(
            data,
            lambda g, formula=formula: aucomb_scores(au4, au12, fit_list[g].k_, fit_list[g].w_au4_, formula),
            lambda g: np.broadcast_to(weights[g], (len(t), weights.shape[1])),
            a_grid,
        )
        tables2[formula] = {
            "n_pairs": len(pairs),
            "independent": {name: _pct(*counts[name]) for name in order},
            "with_aus": {name: _pct(integ[name]["ok"], integ[name]["bad"]) for name in INTEGRATED},
            # Independent accuracies need no change: every held-out pair is already scored
            # by its own fold's fits alone.
            "strict_with_aus": {name: _pct(strict[name]["ok"], strict[name]["bad"]) for name in INTEGRATED},
        }
        if formula == "published_code":
            per["AUcomb_valence_score_n_correct"], per["AUcomb_valence_score_n_incorrect"] = counts["AUcomb"]
            for name in INTEGRATED:
                stem = _INTEGRATION_STEM[name].format("AUcomb")
                per[f"AUcomb_coef_for_{stem}"] = integ[name]["a"]
                per[f"{stem}_n_correct"], per[f"{stem}_n_incorrect"] = integ[name]["ok"], integ[name]["bad"]

    # Accuracy versus coverage over all pairs, with every score out of fold (eq. 5 AUcomb).
    curves = {}
    for name in BASELINES:
        curves[name] = coverage_curve(data.raw[name][pairs.a] - data.raw[name][pairs.b], pairs.sign)
    ens_oof = _out_of_fold_integrated(data, np.zeros(len(t)), image_weights, np.zeros(G))
    curves["Ensemble"] = coverage_curve(ens_oof[pairs.a] - ens_oof[pairs.b], pairs.sign)
    v = valences["paper"]
    curves["AUcomb"] = coverage_curve(v[pairs.a] - v[pairs.b], pairs.sign)
    both = _out_of_fold_integrated(data, v, image_weights, integrations["paper"]["Ensemble"]["a"])
    curves["Ensemble + AUcomb"] = coverage_curve(both[pairs.a] - both[pairs.b], pairs.sign)

    fits_out = [
        {"participant": str(label), "k": round(m.k_, 10), "w_au4": round(m.w_au4_, 10),
         "threshold": round(m.threshold_, 10)}
        for label, m in zip(data.labels, fit_list, strict=True)
    ]
    return {
        "table1": table1,
        "table1_fits": fits_out,
        "table2": tables2["paper"],
        "table2_published_formula": tables2["published_code"],
        "per_participant": per,
        "coverage": {
            "n_pairs": len(pairs), "n_participants": G, "curves": curves,
            "operating_point": {"label": "AUcomb with fitted thresholds (Table 1)",
                                "percent": table1["selected_percent"],
                                "accuracy": table1["accuracy"]["AUcomb"]},
        },
    }


def faunet_results(table: pd.DataFrame, participants, *, model=None, a_grid=INTEGRATION_GRID):
    """FAU-Net LOPO on the given participants: alone, ensemble baseline, ensemble + FAU-Net.

    The part of :func:`reproduce_paper_tables` that trains a network, apart so that a
    caller (``fergi reproduce``) can run it in another process while it does the rest;
    :func:`attach_faunet` adds its output to the tables' results.

    Parameters
    ----------
    table : pandas.DataFrame
        The image table (:func:`fergi.features.image_table`) with the baseline scores.
    participants : sequence of str
        The participants evaluated leave-one-participant-out.
    model : FAUNet, optional
        The network (default ``FAUNet()``, the authors' settings).
    a_grid : sequence of float
        The integration weights searched in each fold (eq. 10).

    Returns
    -------
    dict
        Selective and independent accuracies, pair counts, the accuracy-coverage
        curves and ``per_participant`` (a DataFrame of fold weights and counts).
    """
    data = _Data(table, participants)
    model = FAUNet() if model is None else model
    require_columns(data.table, model.required_columns)
    weights, ens_ok, ens_bad = _ensemble_folds(data)
    fits = model._lopo_fit(data.table, None, data.pairs)
    scores = np.empty(len(data.table))
    for g, label in enumerate(data.labels):
        rows = data.image_group == g
        scores[rows] = fits[label].score_images(data.table[rows])
    pairs = data.pairs
    net_ok, net_bad = count(scores[pairs.a] - scores[pairs.b], pairs.sign, pairs.group, data.n_groups)
    image_weights = weights[data.image_group]
    integ = _integration_folds(data, scores, image_weights, a_grid)
    per = pd.DataFrame({"user_id": data.labels})
    per["ImageReward_weight"], per["PickScore_weight"], per["HPS_V2_weight"] = weights.T
    per["ensemble_baseline_score_n_correct"], per["ensemble_baseline_score_n_incorrect"] = ens_ok, ens_bad
    per["AUs_integrated_score_n_correct"], per["AUs_integrated_score_n_incorrect"] = net_ok, net_bad
    for name, col in BASELINES.items():
        per[f"{col}_n_correct"], per[f"{col}_n_incorrect"] = count(
            data.raw[name][pairs.a] - data.raw[name][pairs.b], pairs.sign, pairs.group, data.n_groups)
    for name in INTEGRATED:
        stem = _INTEGRATION_STEM[name].format("AUs")
        per[f"AUs_coef_for_{stem}"] = integ[name]["a"]
        per[f"{stem}_n_correct"], per[f"{stem}_n_incorrect"] = integ[name]["ok"], integ[name]["bad"]
    both = _out_of_fold_integrated(data, scores, image_weights, integ["Ensemble"]["a"])
    return {
        "n_pairs": len(pairs),
        "n_participants": data.n_groups,
        "independent": _pct(net_ok, net_bad),
        "ensemble": _pct(ens_ok, ens_bad),
        "ensemble_with_faunet": _pct(integ["Ensemble"]["ok"], integ["Ensemble"]["bad"]),
        "with_faunet": {name: _pct(integ[name]["ok"], integ[name]["bad"]) for name in INTEGRATED},
        "per_participant": per,
        "coverage": {
            "FAU-Net": coverage_curve(scores[pairs.a] - scores[pairs.b], pairs.sign),
            "Ensemble + FAU-Net": coverage_curve(both[pairs.a] - both[pairs.b], pairs.sign),
        },
    }


def reproduce_paper_tables(table: pd.DataFrame, *, excluded, faunet=True) -> dict:
    """Tables 1 and 2 of the paper and the FAU-Net results from the public release.

    Parameters
    ----------
    table : DataFrame
        :func:`fergi.features.image_table` of the release (all participants).
    excluded : iterable of str
        Participants left out of Tables 1 and 2 (AU4 screening: 002, 004, 039).
    faunet : bool or dict
        Also train FAU-Net (all participants); a dict is an already computed
        :func:`faunet_results` (e.g. trained in another process).

    Returns
    -------
    dict
        JSON-ready: ``table1`` (``n_pairs``, ``n_selected``, ``accuracy`` keyed CLIP ...
        AUcomb), ``table1_fits`` (k, w_au4, threshold of every fold), ``table2`` (eq. 5),
        ``table2_published_formula`` (the published code's formula), ``faunet``
        (``n_pairs``, ``independent``, ``ensemble``, ``ensemble_with_faunet``),
        ``coverage`` (accuracy-versus-coverage curves), ``preference_per_participant`` (the
        counts behind every figure, with the column names of the published CSVs) and
        ``preference_published`` (the paper's figures, for comparison).
    """
    require_columns(table, ("participant",))
    excluded = {str(p) for p in excluded}
    everyone = sorted(table["participant"].astype(str).unique())
    unknown = excluded - set(everyone)
    if unknown:
        logger.warning("excluded participants not in the table: %s", ", ".join(sorted(unknown)))
    included = [p for p in everyone if p not in excluded]
    res = aucomb_tables(table, included)
    res["preference_per_participant"] = {"aucomb": res.pop("per_participant").to_dict(orient="records")}
    res["preference_published"] = PUBLISHED
    if faunet is not False:
        attach_faunet(res, faunet if isinstance(faunet, dict) else faunet_results(table, everyone))
    return _jsonable(res)


def attach_faunet(results: dict, faunet: dict) -> dict:
    """Add a :func:`faunet_results` output to :func:`reproduce_paper_tables` results (in place).

    Parameters
    ----------
    results : dict
        What :func:`reproduce_paper_tables` returned (with ``faunet=False``).
    faunet : dict
        What :func:`faunet_results` returned.

    Returns
    -------
    dict
        ``results``, with ``faunet``, ``coverage["faunet"]`` and
        ``preference_per_participant["faunet"]`` as plain JSON types.
    """
    fn = dict(faunet)
    per = fn.pop("per_participant")
    results["preference_per_participant"]["faunet"] = _jsonable(
        per.to_dict(orient="records") if isinstance(per, pd.DataFrame) else per)
    results["coverage"]["faunet"] = _jsonable({"n_pairs": fn["n_pairs"], "n_participants": fn["n_participants"],
                                               "curves": fn.pop("coverage")})
    results["faunet"] = _jsonable(fn)
    return results


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj
