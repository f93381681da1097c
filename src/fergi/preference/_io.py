"""Model files, the shipped default model, and pairwise annotation of unlabelled reactions."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.preference._aucomb import AUcombValence
from fergi.preference._base import PreferenceModel
from fergi.preference._faunet import FAUNet
from fergi.preference._lopo import check_participants
from fergi.preference._pairs import KEY_COLUMNS, require_columns

logger = logging.getLogger(__name__)

FORMAT = "fergi-preference-model"
DEFAULT_MODEL = "aucomb_fergi30.json"
KINDS = {"AUcombValence": AUcombValence, "FAUNet": FAUNet}


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file ordinary permissions and move it into place atomically."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FergiError(f"{path}: cannot write ({exc.strerror})") from None


def _temporary_beside(path: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A temporary file in ``path``'s folder (created if needed), for an atomic write."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise FergiError(f"{path}: cannot write ({exc.strerror})") from None


def default_model_path() -> Path:
    """Path of the shipped default model (AUcomb fitted on the 30 screened release participants)."""
    return Path(str(resources.files("fergi.preference") / "models" / DEFAULT_MODEL))


def save_model(model: PreferenceModel, path, *, metadata: dict | None = None) -> Path:
    """Write a fitted AUcombValence or FAUNet model as JSON (atomic write).

    A directory ``path`` (existing, or without a ``.json`` suffix) receives ``model.json``.
    """
    kind = type(model).__name__
    if kind not in KINDS:
        raise FergiError(f"{path}: cannot save a {kind} model (only {', '.join(KINDS)})")
    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".json":
        if path.exists() and not path.is_dir():
            raise FergiError(f"{path}: exists and is not a folder (give a .json file or a folder)")
        path = path / "model.json"
    document = {"format": FORMAT, "version": 1, "kind": kind, "model": model.to_dict(),
                "metadata": metadata or {}}
    fd, tmp = _temporary_beside(path, ".model-", ".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=1, allow_nan=False)
        handle.write("\n")
    _publish(tmp, path)
    return path


def load_model(path=None) -> PreferenceModel:
    """Load a model file written by :func:`save_model` (or ``fergi fit``).

    Parameters
    ----------
    path : path-like, optional
        A model JSON file or a directory holding ``model.json``. ``None`` loads the shipped
        default: AUcomb fitted on the 30 screened participants of the public release (it
        expects AU activations on the scale of the release's AU model).
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
    return model


def annotate_pairs(table: pd.DataFrame, model: PreferenceModel | None = None) -> pd.DataFrame:
    """Preference labels for every within-session pair of images, from facial reactions only.

    No rankings or baseline scores are needed: only ``participant, session, image`` and the
    model's activation columns (``AU4_activation_value`` and ``AU12_activation_value`` for
    AUcomb).

    Parameters
    ----------
    table : DataFrame
        One row per valid image, e.g. :func:`fergi.features.image_table`; rows without
        activation values (invalid clips) are left out with a warning.
    model : PreferenceModel, optional
        A fitted model; default :func:`load_model` ``(None)``.

    Returns
    -------
    DataFrame
        ``participant, session, image_a, image_b, preferred, score_difference, confident``;
        ``preferred`` is the image with the higher valence score (missing on an exact tie) and
        ``confident`` tells whether |score_difference| reaches the model's abstention
        threshold (always True for models without one).
    """
    model = load_model(None) if model is None else model
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


def _finite_or_none(value) -> float | None:
    return float(np.round(value, 10)) if np.isfinite(value) else None


def write_jsonl(labels: pd.DataFrame, path) -> Path:
    """Write :func:`annotate_pairs` output as JSON lines (atomic), one predicted pair a line.

    Keys: ``participant, session, image_a, image_b, preferred, score_difference,
    above_threshold``.
    """
    path = Path(path)
    if path.is_dir():
        raise FergiError(f"{path}: is a folder (give a .jsonl file name)")
    fd, tmp = _temporary_beside(path, ".labels-", ".jsonl")
    preferred = labels["preferred"].astype("Int64")
    try:
        with os.fdopen(fd, "w") as handle:
            for i, row in enumerate(labels.itertuples(index=False)):
                pref = preferred.iloc[i]
                handle.write(json.dumps({
                    "participant": str(row.participant),
                    "session": int(row.session),
                    "image_a": int(row.image_a),
                    "image_b": int(row.image_b),
                    "preferred": None if pd.isna(pref) else int(pref),
                    "score_difference": _finite_or_none(row.score_difference),
                    "above_threshold": bool(row.confident),
                }, allow_nan=False) + "\n")
    except BaseException:
        # Never leave a half-written temporary file behind.
        Path(tmp).unlink(missing_ok=True)
        raise
    _publish(tmp, path)
    return path
