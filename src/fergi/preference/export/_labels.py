"""Label chunks: from a study's reactions, integrated scores and rankings to decided pairs.

The table that flows from here to the writers has the columns of
:data:`fergi.preference.export.LABEL_COLUMNS`, one source per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.preference._annotation import (
    MODEL_NAMES,
    AnnotationModel,
    check_compatibility,
    default_valence,
)
from fergi.preference._evaluation import evaluate_lopo
from fergi.preference._io import annotate_reactions, load_model
from fergi.preference._pairs import pair_index
from fergi.preference.export._columns import ABSTENTIONS, LABEL_COLUMNS, SOURCES


def _empty_labels() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in LABEL_COLUMNS})


def _with_ranks(labels: pd.DataFrame, ranks: dict) -> pd.DataFrame:
    keys_a = zip(labels["participant"].astype(str), labels["session"].astype(int),
                 labels["image_a"].astype(int), strict=True)
    keys_b = zip(labels["participant"].astype(str), labels["session"].astype(int),
                 labels["image_b"].astype(int), strict=True)
    return labels.assign(rank_a=[ranks.get(k, np.nan) for k in keys_a],
                         rank_b=[ranks.get(k, np.nan) for k in keys_b])


def _rank_lookup(images: pd.DataFrame, invalid) -> dict:
    if "rank_score" not in images.columns:
        return {}
    ranks = pd.to_numeric(images["rank_score"], errors="coerce")
    out = {}
    for p, s, i, r in zip(images["participant"].astype(str), images["session"].astype(int),
                          images["image"].astype(int), ranks, strict=True):
        if np.isfinite(r) and (p, s, i) not in invalid:
            out[(p, s, i)] = float(r)
    return out


def _from_scores(scored: pd.DataFrame, column: str, thresholds: dict, source: str,
                 normalization: str) -> pd.DataFrame:
    """Pair labels of an out-of-fold image table (one score column, per-participant thresholds)."""
    values = pd.to_numeric(scored[column], errors="coerce").to_numpy(dtype=float)
    pairs = pair_index(scored, ranked=False)
    diff = values[pairs.a] - values[pairs.b]
    who = scored["participant"].astype(str).to_numpy()[pairs.a]
    keep = np.isfinite(diff) & np.array([thresholds.get(p) is not None for p in who], dtype=bool)
    pairs, diff, who = pairs.subset(keep), diff[keep], who[keep]
    image = scored["image"].to_numpy()
    threshold = np.array([thresholds[p] for p in who], dtype=float)
    undecided = diff == 0
    preferred = pd.array(np.where(diff > 0, image[pairs.a], image[pairs.b]), dtype="Int64")
    preferred[undecided] = pd.NA
    ranks = pd.to_numeric(scored["rank_score"], errors="coerce").to_numpy(dtype=float) \
        if "rank_score" in scored.columns else np.full(len(scored), np.nan)
    return pd.DataFrame({
        "participant": who, "session": scored["session"].to_numpy()[pairs.a],
        "image_a": image[pairs.a], "image_b": image[pairs.b], "preferred": preferred,
        "score_difference": diff, "confidence": np.abs(diff),
        "confident": (np.abs(diff) >= threshold) & ~undecided, "label_source": source,
        "normalization": normalization, "rank_a": ranks[pairs.a], "rank_b": ranks[pairs.b],
    })


def _ranking_labels(images: pd.DataFrame, invalid) -> pd.DataFrame:
    """Every within-session pair of ranked, valid images, labelled by the participant's ranking."""
    if "rank_score" not in images.columns or images.empty:
        return _empty_labels()
    keys = list(zip(images["participant"].astype(str), images["session"].astype(int),
                    images["image"].astype(int), strict=True))
    ranks = pd.to_numeric(images["rank_score"], errors="coerce")
    keep = ranks.notna().to_numpy() & np.array([k not in invalid for k in keys], dtype=bool)
    table = images.loc[keep, ["participant", "session", "image"]].assign(
        rank_score=ranks[keep]).drop_duplicates(["participant", "session", "image"])
    table = table.reset_index(drop=True)
    if len(table) < 2:
        return _empty_labels()
    pairs = pair_index(table, ranked=False)
    r = table["rank_score"].to_numpy(dtype=float)
    image = table["image"].to_numpy()
    diff = r[pairs.a] - r[pairs.b]
    preferred = pd.array(np.where(diff > 0, image[pairs.a], image[pairs.b]), dtype="Int64")
    preferred[diff == 0] = pd.NA
    return pd.DataFrame({
        "participant": table["participant"].astype(str).to_numpy()[pairs.a],
        "session": table["session"].to_numpy()[pairs.a], "image_a": image[pairs.a],
        "image_b": image[pairs.b], "preferred": preferred, "score_difference": diff,
        # A stated preference: full confidence; min_confidence does not apply to it.
        "confidence": np.ones(len(diff)), "confident": diff != 0, "label_source": "ranking",
        "normalization": None, "rank_a": r[pairs.a], "rank_b": r[pairs.b],
    })


@dataclass
class LabelPlan:
    """What :func:`iter_labels` produced besides the labels: for the dataset card."""

    sources: tuple
    lopo: bool
    model: str = ""
    threshold_rule: str = ""
    screened_out: list = field(default_factory=list)
    withdrawn: list = field(default_factory=list)
    participants: int = 0
    consent: str = ""


def _valence_name(model) -> str:
    valence = model.valence_ if isinstance(model, AnnotationModel) else model
    names = {v: k for k, v in MODEL_NAMES.items()}
    kind = type(valence).__name__
    if kind not in names:
        raise FergiError(f"--lopo: cannot refit a {kind} model per fold")
    return names[kind]


def iter_labels(data, *, model=None, sources=("reactions",), lopo: bool = False,
                screened_out=(), on_few_baselines: str = "fallback",
                plan: LabelPlan | None = None, rankings: pd.DataFrame | None = None,
                invalid=None) -> Iterator[pd.DataFrame]:
    """Pairwise labels of every source, one participant at a time.

    Parameters
    ----------
    data : ReactionData or None
        Reactions (and, by default, the rankings); None when only ``ranking`` is asked.
    model : AnnotationModel or PreferenceModel, optional
        Default: the shipped scale-free model.
    sources : sequence of {"reactions", "integrated", "ranking"}
    lopo : bool
        Label each participant with the model refitted without them (strict
        leave-one-participant-out: :func:`~fergi.preference.evaluate_lopo`'s out-of-fold
        scores and each fold's own thresholds). Needs rankings.
    screened_out : iterable of str
        Participants left out of the reaction-based sources (their AU4 is unreliable);
        their rankings are still exported.
    on_few_baselines : {"fallback", "skip", "error"}
        As in :func:`~fergi.preference.annotate_reactions`.
    plan : LabelPlan, optional
        Filled with the facts the dataset card states.
    rankings : DataFrame, optional
        The survey table (``participant, session, image, rank_score``) the ``ranking``
        labels and the agreement figures come from; default ``data.images``. Ranking
        labels do not need a valid reaction.
    invalid : set, optional
        Images never labelled; default ``data.invalid``.

    Yields
    ------
    DataFrame
        Columns :data:`LABEL_COLUMNS`; ``confident`` tells whether a model label reaches
        its abstention threshold, ``rank_a``/``rank_b`` are the images' rank scores (NaN
        where unranked).
    """
    sources = tuple(sources)
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise FergiError(f"--source {bad[0]!r}: unknown (choose from {', '.join(SOURCES)} or all)")
    model = load_model(None) if model is None else model
    screened = {str(p) for p in screened_out}
    plan = plan if plan is not None else LabelPlan(sources, lopo)
    plan.sources, plan.lopo, plan.screened_out = sources, lopo, sorted(screened)
    wants_model = any(s in sources for s in ("reactions", "integrated"))
    if data is None and wants_model:
        raise FergiError("reaction labels need the study's reactions")
    rankings = data.images if rankings is None else rankings
    invalid = (data.invalid if data is not None else set()) if invalid is None else invalid
    ranks = _rank_lookup(rankings, invalid)
    reacting = [p for p in data.participants if p not in screened] if data is not None else []
    everyone = sorted(set(reacting) | (set(rankings["participant"].astype(str))
                                       if "ranking" in sources else set()))
    has_integration = isinstance(model, AnnotationModel) and model.integration_ is not None
    if "integrated" in sources and not has_integration and not lopo:
        raise FergiError("--source integrated: this model has no integration (fit one with "
                         "`fergi fit` on data with ImageReward, PickScore and HPS v2 scores)")
    per_participant: dict[str, list[pd.DataFrame]] = {}
    if wants_model and reacting:
        if lopo:
            if len(reacting) < 2:
                raise FergiError(
                    f"{data.source}: --lopo refits the model without each participant and needs "
                    f"at least 2 participants with reactions ({len(reacting)} here): leave out "
                    "--lopo to label with the model as it is, or use --source ranking")
            normalization = model.normalization if isinstance(model, AnnotationModel) else "none"
            template = AnnotationModel(
                default_valence(_valence_name(model), normalization), normalization,
                integrate="integrated" in sources, fallback="none",
                min_baseline_clips=getattr(model, "min_baseline_clips", 3),
                penalty=getattr(model, "penalty", 2.0))
            result = evaluate_lopo(template, data.subset(reacting), n_boot=1)
            scored = result["scores"]
            plan.model = f"{template!r} refitted in each leave-one-participant-out fold"
            plan.threshold_rule = ("each participant's pairs use the abstention threshold fitted "
                                   "on the other participants (eq. 9's rule)")
            parts = []
            if "reactions" in sources:
                parts.append(_from_scores(scored, "valence_score", result["thresholds"],
                                          "reactions", normalization))
            if "integrated" in sources:
                if not any(t is not None for t in result["integration_thresholds"].values()):
                    raise FergiError(f"{data.source}: --source integrated needs the ImageReward, "
                                     "PickScore and HPS v2 scores of every image")
                parts.append(_from_scores(scored, "integrated_score",
                                          result["integration_thresholds"], "integrated",
                                          normalization))
            for part in parts:
                for p, chunk in part.groupby("participant", sort=True):
                    per_participant.setdefault(str(p), []).append(chunk)
        else:
            check_compatibility(model, data.provenance, where=data.source)
            describe = model.describe() if isinstance(model, AnnotationModel) else repr(model)
            plan.model = describe
            plan.threshold_rule = "the model's own abstention threshold (eq. 9's rule)"
    for participant in everyone:
        chunks = list(per_participant.pop(participant, []))
        if wants_model and not lopo and participant in reacting:
            sub = data.subset([participant])
            if isinstance(model, AnnotationModel):
                if "reactions" in sources:
                    chunks.append(model.annotate(sub, on_few_baselines=on_few_baselines))
                if "integrated" in sources:
                    both = model.annotate(sub, integrate=True, on_few_baselines=on_few_baselines)
                    chunks.append(both[both["label_source"] == "integrated"])
            elif "reactions" in sources:
                chunks.append(annotate_reactions(sub, model, force=True))
            chunks = [_with_ranks(c.assign(confidence=c["score_difference"].abs()), ranks)
                      if "rank_a" not in c.columns else c for c in chunks]
        if "ranking" in sources:
            chunks.append(_ranking_labels(
                rankings[rankings["participant"].astype(str) == participant], invalid))
        chunks = [c for c in chunks if len(c)]
        if chunks:
            plan.participants += 1
            yield pd.concat([c[list(LABEL_COLUMNS)] for c in chunks], ignore_index=True)


def decide(labels: pd.DataFrame, *, all_pairs: bool = False, abstentions: str = "drop",
           min_confidence: float | None = None) -> pd.DataFrame:
    """Turn label rows into training labels: ``label_0``/``label_1`` (1/0, 0/1 or 0.5/0.5).

    A model label is kept when it reaches the model's abstention threshold (any pair
    with ``all_pairs``) and, with ``min_confidence``, when its |score difference| is at
    least that; ranking labels are always kept. Exact ties and the pairs a rule rejects
    are dropped (``abstentions="drop"``) or written as ties 0.5/0.5, the Pick-a-Pic
    convention (``"tie"``).
    """
    if abstentions not in ABSTENTIONS:
        raise FergiError(f"--abstentions {abstentions!r}: choose from {', '.join(ABSTENTIONS)}")
    preferred = labels["preferred"].astype("Int64")
    model_rows = labels["label_source"].to_numpy() != "ranking"
    keep = preferred.notna().to_numpy().copy()
    if not all_pairs:
        keep &= ~model_rows | labels["confident"].to_numpy(dtype=bool)
    if min_confidence is not None:
        keep &= ~model_rows | (labels["confidence"].to_numpy(dtype=float) >= min_confidence)
    first = (preferred == labels["image_a"]).fillna(False).to_numpy(dtype=bool)
    label_0 = np.where(keep, np.where(first, 1.0, 0.0), 0.5)
    out = labels.assign(label_0=label_0, label_1=1.0 - label_0)
    if abstentions == "drop":
        out = out[keep]
    return out.reset_index(drop=True)
