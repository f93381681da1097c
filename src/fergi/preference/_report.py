"""Terminal layout of the reproduced Tables 1 and 2 and the FAU-Net results."""

from __future__ import annotations

from collections import Counter

from fergi.preference._paper import BASELINES, DISCREPANCY, PUBLISHED, STRICT_NOTE

_NAMES = {
    "CLIP": "CLIP Score",
    "Aesthetic": "Aesthetic Score",
    "BLIP": "BLIP Score",
    "ImageReward": "ImageReward Score",
    "PickScore": "PickScore",
    "HPSv2": "HPS V2 Score",
    "Ensemble": "Ensemble Baseline Score",
    "AUcomb": "AUcomb Valence Score",
}


def _f(value) -> str:
    return "/" if value is None else f"{value:.2f}"


def _mark(value, published) -> str:
    if published is None or value is None:
        return ""
    return "" if round(value, 2) == round(published, 2) else f"  (paper {published:.2f})"


def _untrained(results: dict) -> set:
    """Paper names of the baselines ``results["score_columns"]`` flags as untrained output."""
    flags = results.get("score_columns", {})
    return {name for name, column in BASELINES.items()
            if flags.get(column, {}).get("untrained_in_release")}


_UNTRAINED_MARK = "  [untrained in release: chance]"


def format_paper_tables(results: dict) -> str:
    """Tables 1 and 2 and the FAU-Net results laid out like the paper.

    Parameters
    ----------
    results : dict
        Output of :func:`reproduce_paper_tables`.

    Returns
    -------
    str
        Plain text; a figure that differs from the paper is followed by the paper's value,
        and the rows of a score column flagged untrained (``results["score_columns"]``,
        :func:`fergi.datasets.check_score_columns`) are marked as chance.
    """
    pub = results.get("preference_published", PUBLISHED)
    untrained = _untrained(results)
    lines = []
    t1 = results["table1"]
    lines.append(
        f"Table 1. Accuracy on the {t1['n_selected'] / t1['n_pairs']:.2%} of pairs "
        f"({t1['n_selected']} of {t1['n_pairs']}) selected by the AUcomb valence model"
    )
    lines.append(f"  {'Model':<26}{'Acc.':>8}")
    for key, value in t1["accuracy"].items():
        lines.append(f"  {_NAMES[key]:<26}{_f(value):>8}{_mark(value, pub['table1'].get(key))}"
                     f"{_UNTRAINED_MARK if key in untrained else ''}")
    fits = Counter((f["k"], f["w_au4"], f["threshold"]) for f in results["table1_fits"])
    (k, w, d), n = fits.most_common(1)[0]
    lines.append(
        f"  Fitted (k, w_AU4, d) = ({k:g}, {w:g}, {d:g}) in {n} of {len(results['table1_fits'])} folds"
    )
    lines.append("")
    t2p, t2 = results["table2_published_formula"], results["table2"]
    lines.append(f"Table 2. Accuracy on all {t2['n_pairs']} pairs: independent / integrated with AUcomb (eq. 10)")
    strict = t2.get("strict_with_aus")
    head = f"  {'':<26}{'published code':>22}{'eq. 5 as written':>22}"
    cols = f"  {'Model':<26}{'Ind. Acc.':>11}{'w/ AUs':>11}{'Ind. Acc.':>11}{'w/ AUs':>11}"
    if strict is not None:
        head += f"{'strict':>11}"
        cols += f"{'w/ AUs':>11}"
    lines += [head, cols]
    for key in ("CLIP", "Aesthetic", "BLIP", "AUcomb", "ImageReward", "PickScore", "HPSv2", "Ensemble"):
        row = [t2p["independent"][key], t2p["with_aus"].get(key), t2["independent"][key], t2["with_aus"].get(key)]
        if strict is not None:
            row.append(strict.get(key))
        text = "".join(f"{_f(v):>11}" for v in row)
        marks = _mark(row[0], pub["table2_independent"].get(key)) or _mark(row[1], pub["table2_with_aus"].get(key))
        lines.append(f"  {_NAMES[key]:<26}{text}{marks}{_UNTRAINED_MARK if key in untrained else ''}")
    lines.append(f"  Note: {DISCREPANCY}")
    if strict is not None:
        lines.append(f"  Note: {STRICT_NOTE}")
    if "faunet" in results:
        fn = results["faunet"]
        lines.append("")
        lines.append(
            f"FAU-Net (the authors' later model), LOPO over all {fn['n_participants']} participants, "
            f"{fn['n_pairs']} pairs"
        )
        lines.append(f"  {'Model':<26}{'Acc.':>8}{'paper':>8}")
        for key, label in (("independent", "FAU-Net"), ("ensemble", "Ensemble Baseline Score"),
                           ("ensemble_with_faunet", "Ensemble + FAU-Net")):
            lines.append(f"  {label:<26}{_f(fn[key]):>8}{_f(pub['faunet'][key]):>8}")
    return "\n".join(lines)
