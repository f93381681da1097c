"""Model files, the shipped default model, and pairwise annotation of unlabelled reactions."""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._atomic import publish as _publish
from fergi._atomic import temporary_beside as _temporary_beside
from fergi._errors import FergiError
from fergi.datasets import UNKNOWN_PROVENANCE, FeatureProvenance
from fergi.features import image_table
from fergi.preference._annotation import (
    AnnotationModel,
    check_compatibility,
    check_features_have_aus,
)
from fergi.preference._aucomb import AUcombValence
from fergi.preference._data import load_reaction_data
from fergi.preference._faunet import FAUNet
from fergi.preference._linear import Linear12Valence
from fergi.preference._lopo import check_participants
from fergi.preference._pairs import KEY_COLUMNS, require_columns
from fergi.preference._reaction_data import ReactionData

logger = logging.getLogger(__name__)

FORMAT = "fergi-preference-model"
#: The shipped default: scale-free (baseline-median) AUcomb with a quantile fallback and
#: the ensemble integration, fitted on the 30 screened participants of the release.
DEFAULT_MODEL = "aucomb_baseline_fergi30.json"
#: The paper's AUcomb on raw IR-50 activation values (valid on ``ir50-fergi`` features only).
RAW_MODEL = "aucomb_raw_fergi30.json"
KINDS = {"AUcombValence": AUcombValence, "FAUNet": FAUNet, "Linear12Valence": Linear12Valence,
         "AnnotationModel": AnnotationModel}


def default_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a shipped model file (default: the scale-free AUcomb model fitted on the 30
    screened participants of the public release)."""
    return Path(str(resources.files("fergi.preference") / "models" / name))


def save_model(model, path, *, metadata: dict | None = None) -> Path:
    """Write a fitted model as JSON (atomic write).

    Parameters
    ----------
    model : AnnotationModel, AUcombValence, Linear12Valence or FAUNet
        An :class:`AnnotationModel` file records its normalisation, integration,
        fallback and the provenance of the features it was fitted on.
    path : path-like
        A ``.json`` file; a directory (existing, or without a ``.json`` suffix)
        receives ``model.json``.
    metadata : dict, optional
        Free-form facts stored with the model (data, evaluation figures).
    """
    kind = type(model).__name__
    if kind not in KINDS:
        raise FergiError(f"{path}: cannot save a {kind} model (only {', '.join(KINDS)})")
    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".json":
        if path.exists() and not path.is_dir():
            raise FergiError(f"{path}: exists and is not a folder (give a .json file or a folder)")
        path = path / "model.json"
    document = {"format": FORMAT, "version": 2, "kind": kind, "model": model.to_dict(),
                "metadata": metadata or {}}
    features = getattr(model, "features_", None)
    if kind != "AnnotationModel" and isinstance(features, FeatureProvenance):
        document["features"] = features.to_dict()
    fd, tmp = _temporary_beside(path, ".model-", ".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=1, allow_nan=False)
        handle.write("\n")
    _publish(tmp, path)
    return path


def load_model(path=None):
    """Load a model file written by :func:`save_model` (or ``fergi fit``).

    Parameters
    ----------
    path : path-like, optional
        A model JSON file or a directory holding ``model.json``. ``None`` loads the shipped
        default: a scale-free :class:`AnnotationModel` (AUcomb on activation values divided
        by each participant's baseline median, with a quantile-mapped fallback and the
        ensemble integration) fitted on the 30 screened participants of the public release.

    Returns
    -------
    AnnotationModel or PreferenceModel
        With ``metadata_`` and ``features_`` (the provenance of the features it was
        fitted on; unknown for bare models saved by fergi 0.1).
    """
    path = default_model_path() if path is None else Path(path)
    if path.is_dir():
        path = path / "model.json"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise FergiError(f"{path}: no such model file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FergiError(f"{path}: cannot read model file ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise FergiError(f"{path}: not a fergi model file (invalid JSON: {exc.msg})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise FergiError(f"{path}: not a fergi preference model file (no '\"format\": \"{FORMAT}\"')")
    kind = document.get("kind")
    if kind not in KINDS:
        raise FergiError(f"{path}: unknown model kind {kind!r} (expected one of {', '.join(KINDS)})")
    try:
        model = KINDS[kind].from_dict(document["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FergiError(f"{path}: malformed {kind} model ({exc})") from None
    model.metadata_ = document.get("metadata", {})
    if kind != "AnnotationModel":
        try:
            model.features_ = (FeatureProvenance.from_dict(document["features"], source=str(path))
                               if "features" in document else UNKNOWN_PROVENANCE)
        except ValueError as exc:
            raise FergiError(f"{path}: malformed features provenance ({exc})") from None
    return model


def annotate_pairs(table: pd.DataFrame, model=None) -> pd.DataFrame:
    """Preference labels for every within-session pair of an image table, with a raw model.

    No rankings or baseline scores are needed: only ``participant, session, image`` and the
    model's activation columns (``AU4_activation_value`` and ``AU12_activation_value`` for
    AUcomb). The values are used as they are: the model must have been fitted on the
    same AU scale. Scale-free models need each participant's baseline clips or frames:
    use :func:`annotate_reactions`.

    Parameters
    ----------
    table : DataFrame
        One row per valid image, e.g. :func:`fergi.features.image_table`; rows without
        activation values (invalid clips) are left out with a warning.
    model : PreferenceModel or AnnotationModel
        A fitted valence model (e.g. ``AUcombValence().fit(...)``), or an annotation model
        with normalisation ``none`` (such as :data:`RAW_MODEL`); default: the shipped raw
        AUcomb model (IR-50 scale of the public release).

    Returns
    -------
    DataFrame
        ``participant, session, image_a, image_b, preferred, score_difference, confident``;
        ``preferred`` is the image with the higher valence score (missing on an exact tie) and
        ``confident`` tells whether |score_difference| reaches the model's abstention
        threshold (always True for models without one).
    """
    model = load_model(default_model_path(RAW_MODEL)) if model is None else model
    if isinstance(model, AnnotationModel):
        if model.scale_free:
            raise FergiError(
                f"annotate_pairs: the model normalises with {model.normalization!r}, which needs "
                "the participants' baseline clips or frames; use annotate_reactions(data, model)")
        model = model.valence_
    require_columns(table, KEY_COLUMNS)
    require_columns(table, model.required_columns)
    # An image without activation values has no usable reaction (e.g. an invalid clip).
    missing = table[list(model.required_columns)].isna().any(axis=1)
    if missing.any():
        logger.warning("annotate: %d image(s) without activation values left out", int(missing.sum()))
        table = table[~missing]
    model._check_table(table)
    check_participants(table)
    return model.predict(table.reset_index(drop=True))


def annotate_reactions(data, model=None, *, integrate: bool = False,
                       on_few_baselines: str = "fallback", force: bool = False) -> pd.DataFrame:
    """Preference labels for every within-session pair of images, from reactions alone.

    Parameters
    ----------
    data : ReactionData or path-like
        Reactions in memory, or a folder in the release layout (``data/`` with baseline and
        reaction clip features; ``preparation/`` optional).
    model : AnnotationModel or PreferenceModel, optional
        Default: the shipped scale-free model (:func:`load_model` ``(None)``).
    integrate : bool
        Label pairs whose images have the ImageReward, PickScore and HPS v2 scores with
        the integrated score (eq. 10).
    on_few_baselines : {"fallback", "skip", "error"}
        Participants with too few baseline clips for the baseline-median normalisation.
    force : bool
        Annotate even when the features' AU scale does not match a raw model's.

    Returns
    -------
    DataFrame
        ``participant, session, image_a, image_b, preferred, score_difference,
        confident, label_source, normalization``.

    Raises
    ------
    fergi.FergiError
        A raw model on features of another AU estimator (one line saying what to do).
    """
    if not isinstance(data, ReactionData):
        data, _ = load_reaction_data(data)
    model = load_model(None) if model is None else model
    check_compatibility(model, data.provenance, where=data.source, force=force)
    check_features_have_aus(model, data)
    if isinstance(model, AnnotationModel):
        return model.annotate(data, integrate=integrate, on_few_baselines=on_few_baselines)
    if integrate:
        raise FergiError("integrated labels need an annotation model with an integration "
                         "(fit one with `fergi fit` on data with scores)")
    table = image_table(data.images, data.clips, data.invalid)
    labels = annotate_pairs(table, model)
    return labels.assign(label_source="reactions", normalization="none")


def _finite_or_none(value) -> float | None:
    return float(np.round(value, 10)) if np.isfinite(value) else None


def write_jsonl(labels: pd.DataFrame, path) -> Path:
    """Write :func:`annotate_pairs` output as JSON lines (atomic), one predicted pair a line.

    Keys: ``participant, session, image_a, image_b, preferred, score_difference,
    above_threshold``, and ``label_source`` (``reactions`` or ``integrated``) and
    ``normalization`` when the labels carry them.
    """
    path = Path(path)
    if path.is_dir():
        raise FergiError(f"{path}: is a folder (give a .jsonl file name)")
    fd, tmp = _temporary_beside(path, ".labels-", ".jsonl")
    preferred = labels["preferred"].astype("Int64")
    extra = [c for c in ("label_source", "normalization") if c in labels.columns]
    try:
        with os.fdopen(fd, "w") as handle:
            for i, row in enumerate(labels.itertuples(index=False)):
                pref = preferred.iloc[i]
                record = {
                    "participant": str(row.participant),
                    "session": int(row.session),
                    "image_a": int(row.image_a),
                    "image_b": int(row.image_b),
                    "preferred": None if pd.isna(pref) else int(pref),
                    "score_difference": _finite_or_none(row.score_difference),
                    "above_threshold": bool(row.confident),
                }
                for name in extra:
                    record[name] = str(getattr(row, name))
                handle.write(json.dumps(record, allow_nan=False) + "\n")
    except BaseException:
        # Never leave a half-written temporary file behind.
        Path(tmp).unlink(missing_ok=True)
        raise
    _publish(tmp, path)
    return path
