"""Strict leave-one-participant-out evaluation of an annotation model, and its report."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.features import (
    QuantileNormalizer,
)
from fergi.preference._annotation import VALENCE_COLUMN, AnnotationModel
from fergi.preference._base import clone
from fergi.preference._bootstrap import bootstrap_ratio, bootstrap_selective, selective_accuracy
from fergi.preference._pairs import correct_mask, pair_index
from fergi.preference._reaction_data import ReactionData
from fergi.preference._table_helpers import _threshold, _usable

logger = logging.getLogger(__name__)


COVERAGES = (10.0, 19.4, 30.0)


def evaluate_lopo(model: AnnotationModel, data: ReactionData, *, participants=None,
                  coverages=COVERAGES, n_boot: int = 2000, seed: int = 0) -> dict:
    """Strict leave-one-participant-out evaluation of an annotation model.

    For every held-out participant, the quantile reference (``quantile``), the valence
    model, its abstention threshold, the ensemble weights and z-scoring, the integration
    weight and its threshold are all fitted on the other participants alone; the held-out
    participant's own baseline clips (``baseline_median``) are theirs, as at annotation
    time. Accuracy counts within-session pairs of different rank; a zero difference is
    wrong (the published rule).

    Returns
    -------
    dict
        ``n_participants``, ``n_pairs``; ``selective`` (pairs above each fold's threshold:
        ``accuracy``, ``ci``, ``coverage``, ``n_selected``), ``independent`` (all pairs),
        ``integrated`` and ``integrated_selective`` (when scores exist), ``at_coverage``
        (``{"au": {percent: {accuracy, ci}}, "integrated": ...}``: accuracy on the top
        x % of pairs by |difference|, pooled), ``per_participant`` (DataFrame) and
        ``fits`` (per-fold parameters), ``thresholds`` and ``integration_thresholds``
        (participant -> the abstention thresholds of the fold that held them out; None
        where no integration was fitted) and ``scores`` (the out-of-fold image table with
        ``valence_score`` and ``integrated_score``).
    """
    model._check_params()
    everyone = data.participants if participants is None else sorted(str(p) for p in participants)
    data = data.subset(everyone)
    template = model._valence_template()
    needed = template.required_columns
    quantile = model.normalization == "quantile"
    if quantile:
        if data.frames is None:
            raise FergiError(f"{data.source}: the quantile normalisation needs the per-frame features")
        qn = QuantileNormalizer(aus=tuple(model._aus()))
        labels_q, per_q = qn.participant_quantiles(data.frames)
        ranks = qn.ranks(data.frames)
        base_table = None
    else:
        full = model.image_table(data)
        few = full.attrs.get("too_few_baselines", [])
        if few:
            logger.warning("%s: participant(s) %s have fewer than %d valid baseline clips; left out "
                           "of the evaluation", data.source, ", ".join(few), model.min_baseline_clips)
        base_table = _usable(full, needed, ranked=True)
    folds = []
    for held in everyone:
        if quantile:
            train_q = per_q[[str(p) != held for p in labels_q]]
            train_q = train_q[~np.isnan(train_q).any(axis=(1, 2))]
            normalizer = QuantileNormalizer(aus=qn.aus)._set_reference(train_q, len(train_q))
            table = _usable(model.image_table(data, normalizer=normalizer, ranks=ranks), needed, ranked=True)
        else:
            table = base_table
        is_held = table["participant"].astype(str).to_numpy() == held
        if not is_held.any():
            continue
        fold = AnnotationModel(clone(template), model.normalization, integrate=model.integrate,
                               penalty=model.penalty, fallback="none")
        fold._fit_table(table[~is_held].reset_index(drop=True))
        fold.is_fitted_ = True
        scored = fold.score_table(table[is_held].reset_index(drop=True), integrate=True)
        folds.append((held, fold, scored))
    if not folds:
        raise FergiError(f"{data.source}: no participant with ranked images to evaluate")
    scored = pd.concat([s for _, _, s in folds], ignore_index=True)
    pairs = pair_index(scored)
    codes = pairs.group
    n_groups = len(pairs.group_labels)
    thresholds = {h: _threshold(f.valence_) for h, f, _ in folds}
    ithresholds = {h: f.integration_threshold_ for h, f, _ in folds}
    group_label = np.asarray(pairs.group_labels, dtype=object)[codes]
    valence = scored[VALENCE_COLUMN].to_numpy()
    diff = valence[pairs.a] - valence[pairs.b]
    ok = correct_mask(diff, pairs.sign)
    selected = np.abs(diff) >= np.array([thresholds[g] for g in group_label])

    def per(mask):
        return np.bincount(codes, weights=mask, minlength=n_groups)

    n_pairs = per(np.ones(len(diff)))
    table = pd.DataFrame({"participant": pairs.group_labels.astype(str), "n_pairs": n_pairs.astype(int),
                          "n_selected": per(selected).astype(int),
                          "n_correct_selected": per(ok & selected).astype(int),
                          "n_correct_all": per(ok).astype(int)})

    def summary(num, den):
        total = float(np.sum(den))
        return {"accuracy": round(100.0 * float(np.sum(num)) / total, 2) if total else float("nan"),
                "ci": bootstrap_ratio(num, den, n_boot=n_boot, seed=seed),
                "n": int(total)}

    result = {
        "model": repr(model),
        "normalization": model.normalization,
        "n_participants": n_groups,
        "n_pairs": len(diff),
        "selective": {**summary(table["n_correct_selected"], table["n_selected"]),
                      "coverage": round(100.0 * selected.mean(), 2) if len(diff) else float("nan")},
        "independent": summary(table["n_correct_all"], table["n_pairs"]),
        "at_coverage": {"au": {}},
    }
    for percent in coverages:
        result["at_coverage"]["au"][f"{percent:g}"] = {
            "accuracy": selective_accuracy(diff, pairs.sign, percent),
            "ci": bootstrap_selective(diff, pairs.sign, codes, percent, n_boot=n_boot, seed=seed)}
    integrated = scored["integrated_score"].to_numpy()
    if np.isfinite(integrated).all() and all(t is not None for t in ithresholds.values()):
        idiff = integrated[pairs.a] - integrated[pairs.b]
        iok = correct_mask(idiff, pairs.sign)
        isel = np.abs(idiff) >= np.array([ithresholds[g] for g in group_label])
        table["n_correct_integrated"] = per(iok).astype(int)
        table["n_selected_integrated"] = per(isel).astype(int)
        table["n_correct_integrated_selected"] = per(iok & isel).astype(int)
        result["integrated"] = summary(table["n_correct_integrated"], table["n_pairs"])
        result["integrated_selective"] = {
            **summary(table["n_correct_integrated_selected"], table["n_selected_integrated"]),
            "coverage": round(100.0 * isel.mean(), 2)}
        result["at_coverage"]["integrated"] = {
            f"{p:g}": {"accuracy": selective_accuracy(idiff, pairs.sign, p),
                       "ci": bootstrap_selective(idiff, pairs.sign, codes, p, n_boot=n_boot, seed=seed)}
            for p in coverages}
    result["per_participant"] = table
    result["fits"] = {h: f.valence_.to_dict() for h, f, _ in folds}
    # Each held-out participant's labels use the thresholds of the fold fitted without them.
    result["thresholds"] = thresholds
    result["integration_thresholds"] = ithresholds
    result["scores"] = scored
    return result


def format_evaluation(result: dict) -> str:
    """The strict-LOPO figures of :func:`evaluate_lopo` as terminal text."""

    def line(name, entry, extra=""):
        lo, hi = entry["ci"]
        return f"  {name:<34}{entry['accuracy']:>7.2f} %   [{lo:.2f}, {hi:.2f}]{extra}"

    s = result["selective"]
    lines = [f"Strict leave-one-participant-out: {result['n_participants']} participants, "
             f"{result['n_pairs']} pairs (95 % participant-bootstrap intervals)",
             line("selective (own thresholds)", s, f"   coverage {s['coverage']:.2f} %"),
             line("independent (all pairs)", result["independent"])]
    if "integrated" in result:
        si = result["integrated_selective"]
        lines += [line("integrated with the ensemble", result["integrated"]),
                  line("integrated, selective", si, f"   coverage {si['coverage']:.2f} %")]
    for kind, name in (("au", "reactions"), ("integrated", "integrated")):
        for percent, entry in result["at_coverage"].get(kind, {}).items():
            lines.append(line(f"{name}, top {percent} % of pairs", entry))
    return "\n".join(lines)


def participant_summary(result: dict) -> pd.DataFrame:
    """Per-participant accuracies (percent) of an :func:`evaluate_lopo` result."""
    t = result["per_participant"].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        t["selective_accuracy"] = (100.0 * t["n_correct_selected"] / t["n_selected"]).round(2)
        t["independent_accuracy"] = (100.0 * t["n_correct_all"] / t["n_pairs"]).round(2)
    return t
