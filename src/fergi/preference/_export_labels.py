"""Preference labels exported for reward-model and DPO training (Pick-a-Pic, HPD v2, HF).

Three label sources, each kept apart, named in every row and, when several are exported,
written to a split of its own (``train_reactions``, ``train_integrated``, ``train_ranking``):

``reactions``
    The AU-based labels of ``fergi annotate``: pairs above the model's abstention
    threshold (every pair with ``all_pairs``); the |score difference| is the confidence.
``integrated``
    The integrated score (eq. 10: the ImageReward / PickScore / HPS v2 ensemble plus the
    valence score), for pairs whose two images have the three scores.
``ranking``
    The participant's own ranking of the session's images: the study's ground truth.

Only images and labels leave the study: participant IDs become a salted hash (the salt
is kept in the study folder, never exported), face videos and AU traces are never
written (AU activation values only with ``with_features``), and participants who
withdrew are left out. Rows are written in shards as they are made, so the export of
millions of pairs never holds them all in memory, and the export is built in a
temporary sibling folder renamed into place at the end: a failed export leaves nothing.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._atomic import stage_folder, swap_in
from fergi._errors import FergiError
from fergi.schema import AU_NAMES

logger = logging.getLogger(__name__)

FORMATS = ("pickapic", "hpdv2", "hf", "jsonl")
SOURCES = ("reactions", "integrated", "ranking")
ABSTENTIONS = ("drop", "tie")
SALT_NAME = ".fergi_salt"
WITHDRAWN_NAME = "withdrawn.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FEATURE_COLUMNS = tuple(f"{au}_activation_value" for au in AU_NAMES)
#: Columns of a label chunk, the table that flows from label making to the writers.
LABEL_COLUMNS = ("participant", "session", "image_a", "image_b", "preferred", "score_difference",
                 "confidence", "confident", "label_source", "normalization", "rank_a", "rank_b")

#: The Pick-a-Pic v2 columns, in this order and with these types (its dataset card:
#: ``jpg_*`` binary JPEG bytes, ``label_*`` float64 with 0.5/0.5 for a tie,
#: ``user_id``/``ranking_id`` int64, ``created_at`` timestamp[ns]); fergi's own after them.
PICKAPIC_COLUMNS = (
    ("caption", "string"), ("jpg_0", "binary"), ("jpg_1", "binary"),
    ("label_0", "float64"), ("label_1", "float64"), ("are_different", "bool"),
    ("has_label", "bool"), ("best_image_uid", "string"), ("image_0_uid", "string"),
    ("image_1_uid", "string"), ("model_0", "string"), ("model_1", "string"),
    ("user_id", "int64"), ("ranking_id", "int64"), ("created_at", "timestamp[ns]"),
)
FERGI_COLUMNS = (("label_source", "string"), ("confidence", "float64"),
                 ("participant", "string"), ("session", "int64"))

#: How the trainers that read these formats treat a 0.5/0.5 tie, as their code does it
#: (checked in diffusers 58eb52c0 and SalesforceAIResearch/DiffusionDPO 5233e759).
TIE_READERS = (
    ("diffusers' Diffusion-DPO example (examples/research_projects/diffusion_dpo/"
     "train_diffusion_dpo.py, and train_diffusion_dpo_sdxl.py)",
     "misreads a tie: `preprocess_train` swaps the two images only `if label_0 == 0`, so a "
     "0.5/0.5 row trains as \"jpg_0 preferred\""),
    ("the original Diffusion-DPO train.py (SalesforceAIResearch/DiffusionDPO)",
     "misreads a tie unless the dataset name contains \"pickapic\": only then does it drop "
     "rows whose label_0 is not 0 or 1; otherwise it flips the pair only when label_0 == 0"),
    ("HPSv2's trainer (HPDDataset + HPSLoss, hpdv2 format)",
     "reads a tie as a tie: HPSLoss weighs the two images' cross-entropies by "
     "human_preference, 0.5 each"),
)


# ----------------------------------------------------------------------------- privacy
def study_salt(root, *, salt_file=None) -> bytes:
    """The study's secret salt for participant pseudonyms, created once.

    Parameters
    ----------
    root : path-like
        The study folder; the salt lives in ``root/.fergi_salt`` (mode 0600).
    salt_file : path-like, optional
        Another place for it (for a read-only study folder); created when missing.

    Returns
    -------
    bytes

    Raises
    ------
    fergi.FergiError
        The salt file cannot be read or created.
    """
    path = Path(salt_file) if salt_file is not None else Path(root) / SALT_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise FergiError(f"{path}: cannot create the study's salt file ({exc.strerror}); "
                         "pass --salt-file with a writable place") from None
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        logger.info("%s: created the study's pseudonym salt (keep it; never share it)", path)
    try:
        text = path.read_text().strip()
        salt = bytes.fromhex(text)
    except OSError as exc:
        raise FergiError(f"{path}: cannot read the salt file ({exc.strerror})") from None
    except ValueError:
        raise FergiError(f"{path}: not a fergi salt file (expected hex digits)") from None
    if len(salt) < 16:
        raise FergiError(f"{path}: salt too short ({len(salt)} bytes, at least 16 needed)")
    return salt


def _digest(salt: bytes, text: str) -> str:
    return hmac.new(salt, text.encode(), hashlib.sha256).hexdigest()


def pseudonym(participant: str, salt: bytes) -> str:
    """A participant's exported ID: 16 hex digits of HMAC-SHA256(salt, ID)."""
    return _digest(salt, f"participant:{participant}")[:16]


def _int_id(hex_digits: str) -> int:
    # 60 bits: a positive int64, as Pick-a-Pic's user_id and ranking_id.
    return int(hex_digits[:15], 16)


def withdrawn_participants(root) -> set[str]:
    """Participants to leave out of every export, as the study folder records them.

    Read from ``withdrawn.json`` (a list of participant IDs, or ``{"participants": [...]}``)
    and from a ``withdrawn`` column of ``study/sessions.csv`` (a participant with any
    session marked true is left out whole).

    Raises
    ------
    fergi.FergiError
        A malformed ``withdrawn.json``.
    """
    root = Path(root)
    out: set[str] = set()
    file = root / WITHDRAWN_NAME
    if file.is_file():
        try:
            doc = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FergiError(f"{file}: cannot read ({exc.__class__.__name__})") from None
        ids = doc.get("participants") if isinstance(doc, dict) else doc
        if not isinstance(ids, list) or not all(isinstance(p, str | int) for p in ids):
            raise FergiError(f"{file}: expected a list of participant IDs "
                             '(or {"participants": [...]})')
        out |= {str(p) for p in ids}
    sessions = root / "study" / "sessions.csv"
    if sessions.is_file():
        table = pd.read_csv(sessions, dtype=str, keep_default_na=False)
        if "withdrawn" in table.columns and "participant" in table.columns:
            flagged = table["withdrawn"].str.strip().str.lower().isin(("1", "true", "yes"))
            out |= set(table.loc[flagged, "participant"])
    return out


# ----------------------------------------------------------------------------- study facts
def consent_status(root) -> str:
    """One sentence on the consent the study folder records (``study/sessions.csv``)."""
    sessions = Path(root) / "study" / "sessions.csv"
    if not sessions.is_file():
        return ("This study folder records no consent information (no study/sessions.csv): "
                "sharing is governed by the terms under which the data were collected "
                "(for the public FERGI release, its authors' LICENSE).")
    table = pd.read_csv(sessions, dtype=str, keep_default_na=False)
    if "exported" in table.columns:
        table = table[table["exported"].str.lower().isin(("true", "1"))]
    consented = table[table.get("consent_at", pd.Series("", index=table.index)) != ""]
    versions = sorted(set(consented.get("consent_version", pd.Series(dtype=str))) - {""})
    shared = consented.get("share_video", pd.Series("", index=consented.index))
    n_share = int(shared.str.lower().isin(("true", "1")).sum())
    return (f"{len(consented)} of {len(table)} exported sessions have recorded consent "
            f"(consent text version(s): {', '.join(versions) or 'unknown'}); {n_share} allowed "
            "sharing their face video, which is never part of this export.")


def _session_facts(root: Path) -> tuple[dict, dict, dict]:
    """Prompt, generator and finishing time of every session of a ``fergi export`` folder."""
    captions: dict = {}
    generators: dict = {}
    created: dict = {}
    prompts = root / "study" / "prompts.csv"
    if prompts.is_file():
        with prompts.open(newline="") as handle:
            for row in csv.DictReader(handle):
                key = (str(row.get("participant", "")), int(row.get("session") or 0))
                captions[key] = row.get("prompt") or ""
                generators[key] = row.get("generator") or ""
    sessions = root / "study" / "sessions.csv"
    if sessions.is_file():
        with sessions.open(newline="") as handle:
            for row in csv.DictReader(handle):
                when = row.get("finished_at") or row.get("created_at") or ""
                stamp = pd.to_datetime(when, errors="coerce") if when else pd.NaT
                if not pd.isna(stamp):
                    key = (str(row.get("participant", "")), int(row.get("session") or 0))
                    created[key] = stamp.tz_localize(None) if stamp.tzinfo else stamp
    return captions, generators, created


class ImageStore:
    """The generated images of a study: ``images/<participant>/session_<s>/image_<i>.<ext>``.

    Parameters
    ----------
    folder : path-like
        The ``images`` folder (``fergi export`` writes it beside ``data/``).
    cache_size : int
        How many encoded JPEGs to keep (an image is in several pairs); bounded so that
        memory does not grow with the study.
    """

    def __init__(self, folder, *, cache_size: int = 256):
        self.folder = Path(folder)
        self.cache_size = cache_size
        self._cache: dict = {}

    def path(self, participant: str, session: int, image: int) -> Path | None:
        stem = self.folder / str(participant) / f"session_{int(session)}" / f"image_{int(image)}"
        for suffix in IMAGE_SUFFIXES:
            candidate = stem.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        return None

    def expected(self, participant: str, session: int, image: int) -> Path:
        return self.folder / str(participant) / f"session_{int(session)}" / f"image_{int(image)}.png"

    def require(self, participant: str, session: int, image: int) -> Path:
        path = self.path(participant, session, image)
        if path is None:
            raise FergiError(f"{self.expected(participant, session, image)}: missing image "
                             "(every labelled image must be in the images folder)")
        return path

    def jpeg(self, participant: str, session: int, image: int) -> bytes:
        """The image as JPEG bytes (a JPEG file as it is; others converted, quality 95)."""
        key = (str(participant), int(session), int(image))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        path = self.require(*key)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            data = path.read_bytes()
        else:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as img:
                    buffer = io.BytesIO()
                    img.convert("RGB").save(buffer, format="JPEG", quality=95)
            except (UnidentifiedImageError, OSError) as exc:
                raise FergiError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
            data = buffer.getvalue()
        if len(self._cache) >= self.cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = data
        return data


# ----------------------------------------------------------------------------- labels
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
    from fergi.preference._pairs import pair_index

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
    from fergi.preference._pairs import pair_index

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
    from fergi.preference._annotation import MODEL_NAMES, AnnotationModel

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
    from fergi.preference._annotation import AnnotationModel, check_compatibility, default_valence
    from fergi.preference._io import load_model

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
            from fergi.preference._annotation import evaluate_lopo

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
                from fergi.preference._io import annotate_reactions

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


# ----------------------------------------------------------------------------- rows
@dataclass
class _Context:
    salt: bytes
    images: ImageStore | None
    captions: dict
    generators: dict
    created: dict
    features: dict | None = None


def _rows(decided: pd.DataFrame, ctx: _Context) -> pd.DataFrame:
    """Study-free rows: pseudonyms, image uids, captions; the image bytes come later."""
    parts = decided["participant"].astype(str).to_numpy()
    sessions = decided["session"].astype(int).to_numpy()
    a = decided["image_a"].astype(int).to_numpy()
    b = decided["image_b"].astype(int).to_numpy()
    names = {p: pseudonym(p, ctx.salt) for p in np.unique(parts)}
    who = np.array([names[p] for p in parts], dtype=object)
    uid_0 = [f"{w}-s{s}-i{i}" for w, s, i in zip(who, sessions, a, strict=True)]
    uid_1 = [f"{w}-s{s}-i{i}" for w, s, i in zip(who, sessions, b, strict=True)]
    label_0 = decided["label_0"].to_numpy(dtype=float)
    best = np.where(label_0 == 1.0, uid_0, np.where(label_0 == 0.0, uid_1, ""))
    keys = list(zip(parts, sessions.tolist(), strict=True))
    rows = pd.DataFrame({
        "caption": [ctx.captions.get(k, "") for k in keys],
        "label_0": label_0, "label_1": decided["label_1"].to_numpy(dtype=float),
        "are_different": a != b, "has_label": np.ones(len(a), dtype=bool),
        "best_image_uid": best, "image_0_uid": uid_0, "image_1_uid": uid_1,
        "model_0": [ctx.generators.get(k, "") for k in keys],
        "model_1": [ctx.generators.get(k, "") for k in keys],
        "user_id": [_int_id(w) for w in who],
        "ranking_id": [_int_id(_digest(ctx.salt, f"pair:{p}/{s}/{i}/{j}/{src}"))
                       for p, s, i, j, src in zip(parts, sessions, a, b,
                                                  decided["label_source"], strict=True)],
        "created_at": pd.to_datetime(pd.Series([ctx.created.get(k) for k in keys], dtype=object)),
        "label_source": decided["label_source"].astype(str).to_numpy(),
        "confidence": decided["confidence"].to_numpy(dtype=float),
        "participant": who, "session": sessions.astype(np.int64),
        # Kept for the writers (image files, JSON lines); never written as such.
        "_participant": parts, "_image_a": a, "_image_b": b,
        "_preferred": decided["preferred"].astype("Int64").to_numpy(),
        "_score_difference": decided["score_difference"].to_numpy(dtype=float),
        "_confident": decided["confident"].to_numpy(dtype=bool),
        "_normalization": decided["normalization"].to_numpy(),
    })
    if ctx.features is not None:
        nan = np.full(len(FEATURE_COLUMNS), np.nan)
        fa = np.array([ctx.features.get((p, s, i), nan) for p, s, i in zip(parts, sessions, a, strict=True)]).reshape(len(a), -1)
        fb = np.array([ctx.features.get((p, s, i), nan) for p, s, i in zip(parts, sessions, b, strict=True)]).reshape(len(a), -1)
        for j, name in enumerate(FEATURE_COLUMNS):
            rows[f"{name}_0"] = fa[:, j] if len(a) else []
            rows[f"{name}_1"] = fb[:, j] if len(a) else []
    return rows


def _arrow_schema(with_features: bool):
    import pyarrow as pa

    types = {"string": pa.string(), "binary": pa.binary(), "float64": pa.float64(),
             "bool": pa.bool_(), "int64": pa.int64(), "timestamp[ns]": pa.timestamp("ns")}
    fields = [pa.field(n, types[t]) for n, t in (*PICKAPIC_COLUMNS, *FERGI_COLUMNS)]
    if with_features:
        fields += [pa.field(f"{c}_{k}", pa.float64()) for c in FEATURE_COLUMNS for k in (0, 1)]
    return pa.schema(fields)


# ----------------------------------------------------------------------------- writers
def split_name(source: str | None) -> str:
    """The split a label source is written to: ``train``, or ``train_<source>`` per source."""
    return "train" if source is None else f"train_{source}"


class _Writer:
    """Receives row chunks as they come and writes them shard by shard, split by split.

    With ``split_by_source`` every label source gets its own split (``train_reactions``,
    ``train_integrated``, ``train_ranking``): trainers read one split and ignore
    ``label_source``, so the sources, which may contradict each other on the same pair,
    never share one.
    """

    def __init__(self, out: Path, ctx: _Context, shard_size: int, with_features: bool,
                 split_by_source: bool = False):
        self.out, self.ctx, self.shard_size, self.with_features = out, ctx, shard_size, with_features
        self.split_by_source = split_by_source
        self.buffers: dict[str, list[pd.DataFrame]] = {}
        self.buffered: dict[str, int] = {}
        self.shards: dict[str, list[Path]] = {}
        self.n_rows = 0

    @property
    def n_shards(self) -> int:
        return sum(len(v) for v in self.shards.values())

    def add(self, rows: pd.DataFrame) -> None:
        if not self.split_by_source:
            self._add(split_name(None), rows)
            return
        sources = rows["label_source"].to_numpy()
        for source in pd.unique(sources):
            self._add(split_name(str(source)), rows[sources == source].reset_index(drop=True))

    def _add(self, split: str, rows: pd.DataFrame) -> None:
        buffer = self.buffers.setdefault(split, [])
        self.shards.setdefault(split, [])
        buffer.append(rows)
        self.buffered[split] = self.buffered.get(split, 0) + len(rows)
        while self.buffered[split] >= self.shard_size:
            whole = pd.concat(self.buffers[split], ignore_index=True)
            self._flush(split, whole.iloc[:self.shard_size].reset_index(drop=True))
            rest = whole.iloc[self.shard_size:].reset_index(drop=True)
            self.buffers[split], self.buffered[split] = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        for split in list(self.buffers):
            if self.buffered[split]:
                self._flush(split, pd.concat(self.buffers[split], ignore_index=True))
                self.buffers[split], self.buffered[split] = [], 0
        self._finish()

    def _image(self, rows: pd.DataFrame, which: str) -> list[bytes]:
        column = "_image_a" if which == "0" else "_image_b"
        return [self.ctx.images.jpeg(p, s, i) for p, s, i in
                zip(rows["_participant"], rows["session"], rows[column], strict=True)]

    def _flush(self, split: str, rows: pd.DataFrame) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def _name_shards(self, folder: Path, suffix: str) -> None:
        # Hugging Face's naming: load_dataset(OUT) finds each split by it
        # (data/{split}-XXXXX-of-YYYYY.parquet).
        for split, shards in self.shards.items():
            n = len(shards)
            for k, path in enumerate(shards):
                path.rename(folder / f"{split}-{k:05d}-of-{n:05d}{suffix}")


class _PickapicWriter(_Writer):
    def __init__(self, *args):
        super().__init__(*args)
        (self.out / "data").mkdir()

    def _table(self, rows: pd.DataFrame):
        import pyarrow as pa

        schema = _arrow_schema(self.with_features)
        columns = {name: rows[name] for name in schema.names if name not in ("jpg_0", "jpg_1")}
        columns["jpg_0"] = self._image(rows, "0")
        columns["jpg_1"] = self._image(rows, "1")
        arrays = [pa.array(columns[f.name], type=f.type, from_pandas=True) for f in schema]
        return pa.Table.from_arrays(arrays, schema=schema)

    def _flush(self, split: str, rows: pd.DataFrame) -> None:
        import pyarrow.parquet as pq

        path = self.out / "data" / f".shard-{split}-{len(self.shards[split]):05d}.parquet"
        pq.write_table(self._table(rows), path, row_group_size=min(len(rows), 1024))
        self.shards[split].append(path)
        self.n_rows += len(rows)

    def _finish(self) -> None:
        self._name_shards(self.out / "data", ".parquet")


class _HFWriter(_PickapicWriter):
    """Parquet shards first (streamed), then one ``datasets`` conversion with Image features."""

    def _finish(self) -> None:
        import datasets

        features = datasets.Features({
            f.name: (datasets.Image() if f.name in ("jpg_0", "jpg_1") else datasets.Value(str(f.type)))
            for f in _arrow_schema(self.with_features)})
        cache = self.out / ".cache"

        def gen(files):
            import pyarrow.parquet as pq

            for file in files:
                for batch in pq.ParquetFile(file).iter_batches(batch_size=256):
                    for row in batch.to_pylist():
                        row["jpg_0"] = {"bytes": row["jpg_0"], "path": None}
                        row["jpg_1"] = {"bytes": row["jpg_1"], "path": None}
                        yield row

        datasets.disable_progress_bars()
        try:
            splits = {
                split: datasets.Dataset.from_generator(
                    gen, features=features, cache_dir=str(cache),
                    gen_kwargs={"files": [str(p) for p in shards]}, writer_batch_size=256)
                for split, shards in self.shards.items() if shards}
            datasets.DatasetDict(splits).save_to_disk(str(self.out), max_shard_size="500MB")
            del splits
        finally:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(self.out / "data", ignore_errors=True)


class _HPDWriter(_Writer):
    """``train.json`` (a list, written entry by entry) and the images in ``train/``.

    Each entry is ``{prompt, file_path: [a, b], human_preference: [1, 0] | [0, 1]}`` with
    ``file_path`` relative to ``train/``: HPSv2's ``HPDDataset`` (hpsv2/src/training/
    data.py) joins ``file_path`` to ``--train-folder`` (the ``train/`` folder), and its
    bare ``except:`` retries the next item on a missing file instead of failing, so a
    wrong path would silently train on nothing. Per-source splits are
    ``train_<source>.json``, their images shared in ``train/``.
    """

    def __init__(self, *args):
        super().__init__(*args)
        (self.out / "train").mkdir()
        self.handles: dict = {}
        self.written: dict[str, int] = {}
        self.copied: set = set()

    def _handle(self, split: str):
        handle = self.handles.get(split)
        if handle is None:
            handle = self.handles[split] = (self.out / f"{split}.json").open("w")
            handle.write("[")
        return handle

    def _copy(self, participant, session, image, uid) -> str:
        source = self.ctx.images.require(participant, session, image)
        name = f"{uid}{source.suffix.lower()}"
        if uid not in self.copied:
            shutil.copyfile(source, self.out / "train" / name)
            self.copied.add(uid)
        return name

    def _flush(self, split: str, rows: pd.DataFrame) -> None:
        handle = self._handle(split)
        feats = [c for c in rows.columns if c.endswith("_activation_value_0")]
        for row in rows.to_dict("records"):
            entry = {
                "prompt": row["caption"],
                "file_path": [self._copy(row["_participant"], row["session"], row["_image_a"],
                                         row["image_0_uid"]),
                              self._copy(row["_participant"], row["session"], row["_image_b"],
                                         row["image_1_uid"])],
                # HPD v2 writes [1, 0] / [0, 1]; a tie stays [0.5, 0.5] (HPSv2's HPSLoss
                # weighs the two cross-entropies by these labels: a tie is read as one).
                "human_preference": [_label(row["label_0"]), _label(row["label_1"])],
                "label_source": row["label_source"],
                "confidence": _finite(row["confidence"]),
                "participant": row["participant"], "session": int(row["session"]),
            }
            if feats:
                entry["features"] = [
                    {c[:-2]: _finite(row[c]) for c in feats},
                    {c[:-2]: _finite(row[c[:-1] + "1"]) for c in feats}]
            handle.write(("\n" if not self.written.get(split) else ",\n") + json.dumps(entry))
            self.written[split] = self.written.get(split, 0) + 1
            self.n_rows += 1
        self.shards[split] = [self.out / f"{split}.json"]

    def _finish(self) -> None:
        for handle in self.handles.values():
            handle.write("\n]\n")
            handle.close()

    def abort(self) -> None:
        for handle in self.handles.values():
            handle.close()


class _JsonlWriter(_Writer):
    """``labels.jsonl``: the format of ``fergi annotate``, with pseudonymised participants."""

    def __init__(self, *args):
        super().__init__(*args)
        self.handle = (self.out / "labels.jsonl").open("w")

    def _flush(self, split: str, rows: pd.DataFrame) -> None:
        feats = [c for c in rows.columns if c.endswith("_activation_value_0")]
        for row in rows.to_dict("records"):
            label_0 = row["label_0"]
            preferred = (int(row["_image_a"]) if label_0 == 1.0 else
                         int(row["_image_b"]) if label_0 == 0.0 else None)
            norm = row["_normalization"]
            record = {
                "participant": row["participant"], "session": int(row["session"]),
                "image_a": int(row["_image_a"]), "image_b": int(row["_image_b"]),
                "preferred": preferred, "score_difference": _finite(row["_score_difference"]),
                "above_threshold": bool(row["_confident"]), "label_source": row["label_source"],
                "normalization": None if norm is None or pd.isna(norm) else str(norm),
                "confidence": _finite(row["confidence"]),
            }
            if feats:
                record["features_a"] = {c[:-2]: _finite(row[c]) for c in feats}
                record["features_b"] = {c[:-2]: _finite(row[c[:-1] + "1"]) for c in feats}
            self.handle.write(json.dumps(record, allow_nan=False) + "\n")
            self.n_rows += 1

    def _finish(self) -> None:
        self.handle.close()

    def abort(self) -> None:
        self.handle.close()


WRITERS = {"pickapic": _PickapicWriter, "hf": _HFWriter, "hpdv2": _HPDWriter,
           "jsonl": _JsonlWriter}


def _label(value: float) -> int | float:
    return int(value) if value in (0.0, 1.0) else float(value)


def _finite(value) -> float | None:
    value = float(value)
    return round(value, 10) if np.isfinite(value) else None


# ----------------------------------------------------------------------------- staging
def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _stage(final: Path, overwrite: bool, protect: Path | None) -> Path:
    if protect is not None:
        target, data = final.resolve(), protect.resolve()
        if _is_within(data, target):
            raise FergiError(f"--out {final}: is or contains the study folder {protect}; "
                             "choose a folder outside it")
    return stage_folder(final, overwrite=overwrite)


# ----------------------------------------------------------------------------- the export
@dataclass
class ExportSummary:
    """What :func:`export_labels` wrote."""

    out: Path
    format: str
    n_rows: int = 0
    n_shards: int = 0
    n_ties: int = 0
    splits: list = field(default_factory=list)
    per_source: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)
    plan: LabelPlan | None = None
    settings: dict = field(default_factory=dict)

    def agreement_percent(self, source: str = "reactions") -> float | None:
        entry = self.agreement.get(source)
        if not entry or not entry["n"]:
            return None
        return round(100.0 * entry["agree"] / entry["n"], 2)


def _tally(summary: ExportSummary, decided: pd.DataFrame) -> None:
    """Count rows per source, and agreement with the rankings of the decided model labels."""
    summary.n_ties += int((decided["label_0"].to_numpy(dtype=float) == 0.5).sum())
    for source, part in decided.groupby("label_source", sort=False):
        summary.per_source[source] = summary.per_source.get(source, 0) + len(part)
        if source == "ranking":
            continue
        rank_a = part["rank_a"].to_numpy(dtype=float)
        rank_b = part["rank_b"].to_numpy(dtype=float)
        label_0 = part["label_0"].to_numpy(dtype=float)
        known = np.isfinite(rank_a) & np.isfinite(rank_b) & (rank_a != rank_b) & (label_0 != 0.5)
        agree = ((rank_a > rank_b) == (label_0 == 1.0)) & known
        entry = summary.agreement.setdefault(source, {"agree": 0, "n": 0})
        entry["agree"] += int(agree.sum())
        entry["n"] += int(known.sum())


def write_labels(chunks: Iterable[pd.DataFrame], out, *, format: str = "pickapic",
                 images: ImageStore | None = None, salt: bytes, captions: dict | None = None,
                 generators: dict | None = None, created: dict | None = None,
                 features: dict | None = None, all_pairs: bool = False,
                 abstentions: str = "drop", min_confidence: float | None = None,
                 shard_size: int = 10_000, overwrite: bool = False, protect=None,
                 card: Callable[[ExportSummary], str] | None = None,
                 source_name: str = "labels", sources=None) -> ExportSummary:
    """Write label chunks (:func:`iter_labels`) as a training dataset, shard by shard.

    Everything is written into a temporary sibling of ``out`` renamed into place at the
    end; on any error it is removed and a previous export at ``out`` is kept.

    Parameters
    ----------
    chunks : iterable of DataFrame
        Label rows with :data:`LABEL_COLUMNS`.
    out : path-like
    format : {"pickapic", "hpdv2", "hf", "jsonl"}
    images : ImageStore
        Needed by every format but ``jsonl``.
    salt : bytes
        The study's salt (:func:`study_salt`).
    captions, generators, created : dict, optional
        ``(participant, session)`` -> prompt, generator name, timestamp.
    features : dict, optional
        ``(participant, session, image)`` -> the 12 activation values (``--with-features``).
    all_pairs, abstentions, min_confidence
        See :func:`decide`.
    shard_size : int
        Rows per shard (parquet file); memory grows with it, not with the pair count.
    overwrite : bool
        Replace a non-empty ``out``.
    protect : path-like, optional
        A folder ``out`` must not be or contain (the study itself).
    card : callable, optional
        ``card(summary) -> str``: the README.md written with the export.
    source_name : str
        What the error messages call the data.
    sources : sequence of str, optional
        The label sources asked for. With more than one, every format but ``jsonl``
        writes one split per source (:func:`split_name`: ``train_reactions``,
        ``train_integrated``, ``train_ranking``), never mixed rows; otherwise the one
        split is ``train``.

    Returns
    -------
    ExportSummary

    Raises
    ------
    fergi.FergiError
        Unknown format, no label to export, a missing image, an unwritable ``out``.
    """
    if format not in FORMATS:
        raise FergiError(f"--format {format!r}: unknown (choose from {', '.join(FORMATS)})")
    if format != "jsonl" and images is None:
        raise FergiError(f"--format {format}: needs the study's images folder")
    if shard_size < 1:
        raise FergiError(f"--shard-size {shard_size}: must be at least 1")
    if format == "hf":
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise FergiError("--format hf: needs Hugging Face datasets "
                             "(pip install 'fergi[export]')") from None
    final = Path(out)
    staged = _stage(final, overwrite, None if protect is None else Path(protect))
    ctx = _Context(salt, images, captions or {}, generators or {}, created or {}, features)
    summary = ExportSummary(out=final, format=format)
    writer = None
    try:
        split_by_source = format != "jsonl" and sources is not None and len(tuple(sources)) > 1
        writer = WRITERS[format](staged, ctx, shard_size, features is not None, split_by_source)
        for chunk in chunks:
            decided = decide(chunk, all_pairs=all_pairs, abstentions=abstentions,
                             min_confidence=min_confidence)
            if decided.empty:
                continue
            _tally(summary, decided)
            writer.add(_rows(decided, ctx))
            summary.n_rows += len(decided)
        if summary.n_rows == 0:
            raise FergiError(_no_label_message(source_name, sources, all_pairs, min_confidence))
        writer.close()
        summary.n_shards = writer.n_shards
        summary.splits = [split for split, shards in writer.shards.items() if shards]
        if card is not None:
            (staged / "README.md").write_text(card(summary))
        info = {"format": format, "rows": summary.n_rows, "splits": summary.splits,
                "ties": summary.n_ties, "per_source": summary.per_source,
                "agreement_with_rankings": {k: {**v, "percent": summary.agreement_percent(k)}
                                            for k, v in summary.agreement.items()},
                **summary.settings}
        (staged / "export_info.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
        swap_in(staged, final)
    except OSError as exc:
        if writer is not None and hasattr(writer, "abort"):
            writer.abort()
        shutil.rmtree(staged, ignore_errors=True)
        raise FergiError(f"--out {final}: export failed, nothing written ({exc.strerror or exc})") from None
    except BaseException:
        if writer is not None and hasattr(writer, "abort"):
            writer.abort()
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return summary


def _no_label_message(source_name: str, sources, all_pairs: bool, min_confidence) -> str:
    """One line: why nothing was exported, and the options that give labels."""
    sources = tuple(sources) if sources is not None else ("reactions",)
    if sources == ("ranking",):
        return (f"{source_name}: no label to export (no session has two ranked valid images of "
                "a participant who is not left out)")
    hints = []
    if not all_pairs:
        hints.append("--all-pairs labels every pair by the sign of its score difference")
    if min_confidence is not None:
        hints.append(f"a --min-confidence below {min_confidence:g} keeps more")
    if "ranking" not in sources:
        hints.append(f"--source ranking (or {','.join(sources)},ranking) exports the participants' "
                     "own rankings")
    reason = ("no pair reached the model's abstention threshold" +
              (" and --min-confidence" if min_confidence is not None else "")
              if not all_pairs or min_confidence is not None else "no pair could be labelled")
    return f"{source_name}: no label to export ({reason}): " + "; ".join(hints or ["check --exclude-participants"])


def _parse_sources(source) -> tuple:
    if isinstance(source, str):
        source = SOURCES if source == "all" else tuple(s.strip() for s in source.split(","))
    source = tuple(source)
    bad = [s for s in source if s not in SOURCES]
    if bad or not source:
        raise FergiError(f"--source {','.join(source)!r}: choose from {', '.join(SOURCES)} or all")
    return source


def export_labels(data, out, *, format: str = "pickapic", source="reactions", model=None,
                  lopo: bool = False, screen: bool = False, all_pairs: bool = False,
                  abstentions: str = "drop", min_confidence: float | None = None,
                  exclude_participants=(), with_features: bool = False,
                  shard_size: int = 10_000, images_dir=None, salt_file=None,
                  overwrite: bool = False, skip_single: bool = False,
                  on_few_baselines: str = "fallback",
                  max_seen_before_s: float | None = 0.5) -> ExportSummary:
    """Export a study's preference labels for reward-model and DPO training.

    Parameters
    ----------
    data : path-like
        A study in the release layout (``fergi export`` output, or the public release
        with an ``images/`` folder added): ``data/``, ``preparation/``, ``images/``, and
        optionally ``study/prompts.csv`` (captions) and ``study/sessions.csv``.
    out : path-like
        The output folder (new or empty unless ``overwrite``).
    format : {"pickapic", "hpdv2", "hf", "jsonl"}
        ``pickapic``: parquet shards ``data/<split>-XXXXX-of-YYYYY.parquet`` in the
        columns of Pick-a-Pic v2 (what Diffusion-DPO's training script reads), fergi's
        ``label_source, confidence, participant, session`` after them. ``hpdv2``:
        ``<split>.json`` as HPD v2's training split (``prompt``, ``file_path`` relative to
        ``train/``, ``human_preference``) with the images in ``train/``, as HPSv2's
        ``HPDDataset`` reads it. ``hf``: a ``datasets.DatasetDict`` (one entry per split)
        saved with ``save_to_disk`` (``datasets.load_from_disk(out)``) with Image
        features. ``jsonl``: ``labels.jsonl`` as ``fergi annotate`` writes it. Every
        format gets a dataset card ``README.md`` and ``export_info.json``.
    source : str or sequence
        ``reactions``, ``integrated``, ``ranking``, a comma-separated list, or ``all``.
        One source is the split ``train``; with several, each is its own split
        (``train_reactions``, ``train_integrated``, ``train_ranking``) in every format
        but ``jsonl``, never mixed rows.
    model : AnnotationModel, optional
        Default: the shipped scale-free model (:func:`~fergi.preference.load_model`).
    lopo : bool
        Label each participant with the model refitted without them (needs rankings):
        the labels' agreement with the rankings is then an honest estimate.
    screen : bool
        Leave participants whose AU4 is unreliable at rest out of the reaction-based
        sources (Sec. 6.2.1), as ``fergi reproduce`` does.
    all_pairs, abstentions, min_confidence
        See :func:`decide`. With ``abstentions="tie"``, a Pick-a-Pic-style export with
        ties logs a warning (:func:`tie_warning`) and its card lists which trainers
        misread ties (:data:`TIE_READERS`).
    exclude_participants : iterable of str
        Participants to leave out (withdrawn consent), besides those listed in
        ``withdrawn.json`` or marked in ``study/sessions.csv``.
    with_features : bool
        Also export each image's 12 AU activation values (never the per-frame traces).
    shard_size : int
        Pairs per shard.
    images_dir : path-like, optional
        Where the images are (default ``data/../images``).
    salt_file : path-like, optional
        Where the pseudonym salt is kept (default ``<data>/.fergi_salt``).
    max_seen_before_s : float or None
        Reaction-based sources leave out (and count, in a warning) images seen before
        for longer than this (default 0.5 s); ranking labels keep them.

    Returns
    -------
    ExportSummary
    """
    from fergi.features import screen_participants
    from fergi.preference._data import load_reaction_data

    root = Path(data)
    if not (root / "data").is_dir():
        raise FergiError(f"{root}: not a study folder (no data/ folder)")
    sources = _parse_sources(source)
    salt = study_salt(root, salt_file=salt_file)
    withdrawn = withdrawn_participants(root) | {str(p) for p in exclude_participants}
    wants_model = any(s in sources for s in ("reactions", "integrated"))
    reactions = load_reaction_data(root, skip_single=skip_single,
                                   max_seen_before_s=max_seen_before_s)[0] if wants_model else None
    rankings, invalid = _survey(root, reactions)
    present = set(rankings["participant"].astype(str))
    if reactions is not None:
        present |= set(reactions.participants)
    unknown = sorted(withdrawn - present)
    if unknown:
        logger.warning("%s: participant(s) %s to leave out are not in the study", root,
                       ", ".join(unknown))
    keep = sorted(present - withdrawn)
    rankings = rankings[rankings["participant"].astype(str).isin(keep)]
    if reactions is not None:
        reactions = reactions.subset([p for p in reactions.participants if p in keep])
    if not keep or (reactions is not None and not reactions.participants and
                    "ranking" not in sources):
        raise FergiError(f"{root}: no label to export (every participant is left out)")
    screened_out: list[str] = []
    if screen and reactions is not None:
        if (reactions.clips["clip"] == "baseline").any():
            screened_out = list(screen_participants(reactions.clips))
        else:
            logger.warning("%s: no baseline clips, AU4 screening skipped", root)
    images = None
    if format != "jsonl":
        folder = Path(images_dir) if images_dir is not None else root / "images"
        if not folder.is_dir():
            raise FergiError(f"{folder}: no images folder (the {format} format embeds the "
                             "images; give --images DIR)")
        images = ImageStore(folder)
    captions, generators, created = _session_facts(root)
    if not captions:
        logger.warning("%s: no study/prompts.csv; captions are empty", root)
    features = None
    if with_features and reactions is not None:
        from fergi.features import image_table

        table = image_table(reactions.images, reactions.clips, reactions.invalid)
        values = table[list(FEATURE_COLUMNS)].to_numpy(dtype=float)
        features = {(str(p), int(s), int(i)): values[k] for k, (p, s, i) in
                    enumerate(zip(table["participant"], table["session"], table["image"], strict=True))}
    plan = LabelPlan(sources, lopo, withdrawn=sorted(withdrawn & present),
                     consent=consent_status(root))
    chunks = iter_labels(reactions, model=model, sources=sources, lopo=lopo,
                         screened_out=screened_out, on_few_baselines=on_few_baselines, plan=plan,
                         rankings=rankings, invalid=invalid)
    if images is not None:
        chunks = _checked(chunks, images)
    settings = {"sources": list(sources), "lopo": lopo, "screen": screen, "all_pairs": all_pairs,
                "abstentions": abstentions, "min_confidence": min_confidence,
                "with_features": with_features, "shard_size": shard_size}
    summary_holder: dict = {}

    def card(summary: ExportSummary) -> str:
        summary.plan = plan
        summary.settings = settings
        summary_holder["s"] = summary
        return dataset_card(summary)

    summary = write_labels(chunks, out, format=format, images=images, salt=salt,
                           captions=captions, generators=generators, created=created,
                           features=features, all_pairs=all_pairs, abstentions=abstentions,
                           min_confidence=min_confidence, shard_size=shard_size,
                           overwrite=overwrite, protect=root, card=card, source_name=str(root),
                           sources=sources)
    summary.plan, summary.settings = plan, settings
    logger.info("exported %d labelled pairs to %s", summary.n_rows, summary.out)
    warning = tie_warning(summary)
    if warning:
        logger.warning("%s", warning)
    return summary


def tie_warning(summary: ExportSummary) -> str | None:
    """One line on the 0.5/0.5 ties of a Pick-a-Pic-style export and who misreads them."""
    if not summary.n_ties or summary.format not in ("pickapic", "hf"):
        return None
    return (f"{summary.out}: {summary.n_ties} of {summary.n_rows} rows are 0.5/0.5 ties; "
            "diffusers' train_diffusion_dpo.py trains on a tie as \"jpg_0 preferred\" (it swaps "
            "the images only when label_0 == 0): keep label_0 in (0, 1) before DPO training, or "
            "export with --abstentions drop (README.md, \"Ties\")")


def _survey(root: Path, reactions) -> tuple[pd.DataFrame, set]:
    """The rankings of every surveyed image and the invalid images of a study folder."""
    from fergi.datasets import load_images, load_invalid_images

    if (root / "preparation" / "preprocessed_image_data").is_dir():
        images = load_images(root)
        # The study's participants are those with recordings under data/.
        recorded = {d.name for d in (root / "data").iterdir() if d.is_dir()}
        images = images[images["participant"].astype(str).isin(recorded)]
    elif reactions is not None:
        images = reactions.images
    else:
        raise FergiError(f"{root / 'preparation' / 'preprocessed_image_data'}: missing "
                         "(ranking labels need the participants' rankings)")
    return images, load_invalid_images(root)


def _checked(chunks: Iterable[pd.DataFrame], images: ImageStore) -> Iterator[pd.DataFrame]:
    """Fail on the first missing image before a shard with it is written."""
    for chunk in chunks:
        seen = set()
        for column in ("image_a", "image_b"):
            for key in zip(chunk["participant"].astype(str), chunk["session"].astype(int),
                           chunk[column].astype(int), strict=True):
                if key not in seen:
                    seen.add(key)
                    images.require(*key)
        yield chunk


# ----------------------------------------------------------------------------- dataset card
def dataset_card(summary: ExportSummary) -> str:
    """The README.md of an export: how the labels were made, their accuracy, consent."""
    plan = summary.plan or LabelPlan((), False)
    s = summary.settings
    splits = summary.splits or ["train"]
    configs = []
    if summary.format == "pickapic":
        # Named explicitly, so that load_dataset(OUT) and the Hub find every split.
        configs = ["configs:", "- config_name: default", "  data_files:"]
        for split in splits:
            configs += [f"  - split: {split}", f"    path: data/{split}-*"]
    lines = [
        "---",
        "task_categories:", "- text-to-image",
        "tags:", "- human-preference", "- facial-expression", "- fergi",
        *configs,
        "---",
        "# Preference labels from facial reactions (fergi)",
        "",
        f"Exported by fergi in the `{summary.format}` format: {summary.n_rows} labelled image "
        f"pairs from {plan.participants} participants.",
        "",
        "## How the labels were made",
        "",
    ]
    explain = {
        "reactions": ("`reactions`: the participant's facial reaction to each image (AU "
                      "activation values, FERGI's valence score) decides which image of a pair "
                      "they preferred; `confidence` is the |difference of the two valence scores|."),
        "integrated": ("`integrated`: the ImageReward / PickScore / HPS v2 ensemble plus the "
                       "valence score (the FERGI paper's eq. 10), for pairs whose images have "
                       "those scores; `confidence` is the |difference of the integrated scores|."),
        "ranking": ("`ranking`: the participant's own ranking of the session's images (the "
                    "study's ground truth); `confidence` is 1."),
    }
    for source in plan.sources:
        lines.append(f"- {explain[source]} Rows: {summary.per_source.get(source, 0)}.")
    lines += ["", "Every row names its source in `label_source`; the sources are never merged."]
    if len(splits) > 1 or splits[0] != "train":
        lines += [f"Each source is its own split ({', '.join(f'`{x}`' for x in splits)}): trainers "
                  "read one split and ignore `label_source`, and two sources may label the same "
                  "pair differently, so their rows are never mixed. Pick one, e.g. diffusers' "
                  f"`--dataset_split_name={splits[0]}`."]
    lines += [""]
    if any(x in plan.sources for x in ("reactions", "integrated")):
        lines += [f"Model: {plan.model}.", ""]
        rule = ("every pair is labelled by the sign of its score difference, however small "
                "(`--all-pairs`)" if s.get("all_pairs") else
                f"a pair is labelled only when its |score difference| reaches the abstention "
                f"threshold: {plan.threshold_rule}")
        lines += [f"**Abstention rule**: {rule}."]
        if s.get("min_confidence") is not None:
            lines += [f"Pairs with a confidence below {s['min_confidence']} are also left out."]
        ties = (f"written as ties (`label_0` = `label_1` = 0.5, the Pick-a-Pic convention): "
                f"{summary.n_ties} rows; see \"Ties\" below" if s.get("abstentions") == "tie"
                else "left out")
        lines += [f"Pairs the rule rejects, and exact ties, are {ties}.", ""]
        lines += ["## Label accuracy against the participants' rankings", ""]
        mode = ("Each participant was labelled by the model fitted on the other participants "
                "only (strict leave-one-participant-out), so this is an honest estimate of "
                "the accuracy on new people." if plan.lopo else
                "The model was not refitted without these participants: if it was fitted on "
                "them (the shipped model was fitted on the public FERGI release), this figure "
                "is optimistic; export with `--lopo` for an honest one.")
        for source in plan.sources:
            if source == "ranking":
                continue
            entry = summary.agreement.get(source, {"agree": 0, "n": 0})
            pct = summary.agreement_percent(source)
            figure = (f"**{pct:.2f} %** ({entry['agree']} of {entry['n']} labelled pairs whose "
                      "images the participant ranked differently)" if pct is not None else
                      "not measurable (no ranked pair among the labelled ones)")
            lines.append(f"- `{source}` labels agree with the rankings: {figure}.")
        lines += ["", mode, ""]
        if plan.screened_out:
            lines += [f"Participants screened out of the reaction labels (unreliable AU4 at "
                      f"rest, FERGI Sec. 6.2.1): {len(plan.screened_out)}.", ""]
    if summary.n_ties:
        lines += ["## Ties", "",
                  f"{summary.n_ties} rows are 0.5/0.5 ties (`--abstentions tie`). Not every trainer "
                  "reads them as ties:", ""]
        lines += [f"- {who}: {what}." for who, what in TIE_READERS]
        lines += ["", "Before training a DPO model, keep the decided rows only, e.g. "
                  "`ds.filter(lambda row: row[\"label_0\"] in (0.0, 1.0))`, or export with "
                  "`--abstentions drop` (the default).", ""]
    lines += [
        "## Consent, privacy and sharing",
        "",
        "- Participant IDs are replaced by a salted hash (HMAC-SHA256) per study; the salt "
        "stays in the study folder and is never exported. `user_id` is derived from it.",
        "- Only the generated images and the labels are exported: no face video, no per-frame "
        "AU trace" + (" (each image's 12 AU activation values are included: `--with-features`)."
                      if s.get("with_features") else ", no AU value."),
        f"- Participants who withdrew are left out ({len(plan.withdrawn)} in this study: "
        "`withdrawn.json`, the `withdrawn` column of `study/sessions.csv`, or "
        "`--exclude-participants`).",
        "- Captions are the prompts the participants wrote: review them before publishing.",
        f"- Consent: {plan.consent or 'not recorded.'}",
        "- Sharing status: not cleared for public release by fergi; check that the consent "
        "covers publishing these labels, images and prompts before you share this dataset "
        "outside your group.",
        "",
        "## Columns",
        "",
    ]
    where = {"pickapic": ", ".join(f"`data/{x}-XXXXX-of-YYYYY.parquet`" for x in splits),
             "hf": ", ".join(f"split `{x}`" for x in splits),
             "hpdv2": ", ".join(f"`{x}.json`" for x in splits)}.get(summary.format)
    if where:
        lines += [f"Files: {where}.", ""]
    if summary.format in ("pickapic", "hf"):
        lines += ["The Pick-a-Pic v2 columns (`caption`, `jpg_0`, `jpg_1`, `label_0`, `label_1`, "
                  "`are_different`, `has_label`, `best_image_uid`, `image_0_uid`, `image_1_uid`, "
                  "`model_0`, `model_1`, `user_id`, `ranking_id`, `created_at`), then fergi's "
                  "`label_source`, `confidence`, `participant` (pseudonym) and `session`. "
                  "`label_0` = 1 means `jpg_0` was preferred.", ""]
    elif summary.format == "hpdv2":
        lines += ["HPD v2's training layout: a list of `{prompt, file_path: [a, b], "
                  "human_preference: [1, 0] | [0, 1] | [0.5, 0.5], label_source, confidence, "
                  "participant, session}`, `file_path` relative to `train/`, where the images "
                  "are (HPSv2's trainer: `--train-data OUT/train.json --train-folder OUT/train "
                  "--dataset-type HPD`).", ""]
    else:
        lines += ["`labels.jsonl`: one pair a line, as `fergi annotate` writes it, with "
                  "`participant` pseudonymised and `confidence` added.", ""]
    return "\n".join(lines)
