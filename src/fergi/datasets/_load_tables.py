"""Loaders of the release's session and image tables: valid sessions, invalid, seen and excluded images, ratings."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.datasets._load import _check_root, _known_participants, _read_json
from fergi.schema import (
    EMOTIONS,
    IMAGE_COLUMNS,
    ISSUES,
    RATINGS,
    SCORE_COLUMNS,
)

logger = logging.getLogger(__name__)


def load_valid_sessions(path: str | os.PathLike) -> dict[str, list[int]]:
    """Read ``preparation/valid_sessions.json``: ``{participant: [session, ...]}``."""
    file = _check_root(path) / "preparation" / "valid_sessions.json"
    if not file.exists():
        raise FergiError(f"{file}: missing")
    raw = _read_json(file)
    if not isinstance(raw, dict):
        raise FergiError(f"{file}: expected an object {{participant: [session, ...]}}")
    try:
        return {str(p): sorted(int(s) for s in sessions) for p, sessions in raw.items()}
    except (TypeError, ValueError):
        raise FergiError(f"{file}: session numbers must be integers") from None


def load_invalid_images(path: str | os.PathLike) -> set[tuple[str, int, int]]:
    """Read ``preparation/invalid_images.json`` (all-black safety-checker outputs).

    Returns
    -------
    set of (participant, session, image)
        Empty when the file does not exist.
    """
    file = _check_root(path) / "preparation" / "invalid_images.json"
    if not file.exists():
        return set()
    raw = _read_json(file)
    out = set()
    try:
        for participant, sessions in raw.items():
            for session, images in sessions.items():
                out.update((str(participant), int(session), int(i)) for i in images)
    except (AttributeError, TypeError, ValueError):
        raise FergiError(f"{file}: expected {{participant: {{session: [image, ...]}}}}") from None
    return out


#: Reactions to an image the participant had seen before for longer than this (seconds)
#: are left out by default: a replay after an interruption is not a first impression.
DEFAULT_MAX_SEEN_BEFORE_S = 0.5


def load_seen_before(path: str | os.PathLike) -> dict[tuple[str, int, int], float]:
    """Seconds each reaction's image had been seen before it, from ``study/clips.csv``.

    ``fergi export`` writes that file with the ``exposure`` and ``seen_before_s`` of
    every clip: 0 for the first showing of an image, more for a replay after an
    interrupted presentation (camera lost, tab hidden, reload). The public release has
    no such file: nothing was seen before.

    Returns
    -------
    dict
        ``{(participant, session, image): seen_before_s}`` of the reaction clips that
        have a value; empty when the file or its column is missing.
    """
    file = _check_root(path) / "study" / "clips.csv"
    if not file.is_file():
        return {}
    try:
        table = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise FergiError(f"{file}: unreadable ({exc})") from None
    if "seen_before_s" not in table.columns:
        return {}
    missing = [c for c in ("participant", "session", "image", "clip") if c not in table.columns]
    if missing:
        raise FergiError(f"{file}: missing column(s) {', '.join(missing)}")
    out = {}
    for row in table[(table["clip"] == "reaction") & (table["seen_before_s"] != "")].itertuples(index=False):
        try:
            out[(str(row.participant), int(row.session), int(row.image))] = float(row.seen_before_s)
        except ValueError:
            raise FergiError(
                f"{file}: seen_before_s {row.seen_before_s!r} of {row.participant}/session_{row.session}"
                f"/image {row.image} is not a number"
            ) from None
    return out


def load_seen_images(
    path: str | os.PathLike, max_seen_before_s: float | None = DEFAULT_MAX_SEEN_BEFORE_S
) -> set[tuple[str, int, int]]:
    """Images whose reaction came after more than ``max_seen_before_s`` of an earlier look.

    Parameters
    ----------
    path : path-like
        A study export (see :func:`load_seen_before`).
    max_seen_before_s : float or None
        Seconds of earlier viewing tolerated (default 0.5); None keeps every reaction.

    Returns
    -------
    set of (participant, session, image)
    """
    if max_seen_before_s is None:
        return set()
    if max_seen_before_s < 0:
        raise FergiError(f"--max-seen-before must be at least 0, got {max_seen_before_s}")
    return {key for key, seen in load_seen_before(path).items() if seen > max_seen_before_s}


def load_excluded_images(
    path: str | os.PathLike, max_seen_before_s: float | None = DEFAULT_MAX_SEEN_BEFORE_S
) -> set[tuple[str, int, int]]:
    """Images whose reactions give no label: invalid ones and those seen before.

    The union of :func:`load_invalid_images` and :func:`load_seen_images`; how many
    were left out for an earlier look is logged, since a second look is not a
    spontaneous reaction.

    Parameters
    ----------
    path : path-like
        The dataset root.
    max_seen_before_s : float or None
        Seconds of earlier viewing tolerated (default 0.5); None keeps every reaction.

    Returns
    -------
    set of (participant, session, image)
    """
    invalid = load_invalid_images(path)
    seen = load_seen_images(path, max_seen_before_s) - invalid
    if seen:
        logger.warning("%s: left out %d reaction(s) to an image seen before for more than %.1f s "
                       "(a replay after an interruption; --max-seen-before)",
                       path, len(seen), max_seen_before_s)
    return invalid | seen


_TRUE = np.array(["true", "1"])
_FALSE = np.array(["false", "0"])


def _read_image_file(file: Path) -> pd.DataFrame:
    try:
        raw = pd.read_csv(file, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise FergiError(f"{file}: empty file") from None
    except pd.errors.ParserError as exc:
        raise FergiError(f"{file}: malformed CSV ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise FergiError(f"{file}: not UTF-8 text (save the table as UTF-8 CSV)") from None
    required = ["session_index", "image_index", *RATINGS]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise FergiError(f"{file}: missing column(s) {', '.join(missing)}")
    return raw


def _convert_images(raw: pd.DataFrame, files: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
    """Convert the concatenated string tables column by column (fast), naming bad cells."""

    def fail(bad: np.ndarray, column: str, what: str) -> None:
        i = int(np.flatnonzero(bad)[0])
        raise FergiError(f"{files[i]}: value {raw[column].iloc[i]!r} in column '{column}' {what} (row {rows[i] + 1})")

    out = pd.DataFrame({"participant": [Path(f).stem for f in files]}, index=raw.index)
    for column in ("session_index", "image_index", *RATINGS, "rank_score", *SCORE_COLUMNS):
        if column not in raw.columns:
            out[column] = np.nan
            continue
        text = raw[column].fillna("").str.strip().to_numpy(dtype=object)
        empty = text == ""
        numbers = pd.to_numeric(pd.Series(np.where(empty, None, text)), errors="coerce").to_numpy(dtype=float)
        if np.any(np.isnan(numbers) & ~empty):
            fail(np.isnan(numbers) & ~empty, column, "is not a number")
        if column in ("session_index", "image_index") and empty.any():
            fail(empty, column, "is empty")
        out[column] = numbers
    for column in (*ISSUES, *EMOTIONS):
        if column not in raw.columns:
            out[column] = pd.array([pd.NA] * len(raw), dtype="boolean")
            continue
        text = raw[column].fillna("").str.strip().str.lower().to_numpy(dtype=str)
        true, false = np.isin(text, _TRUE), np.isin(text, _FALSE)
        bad = ~(true | false | (text == ""))
        if bad.any():
            fail(bad, column, "is not True/False")
        out[column] = pd.arrays.BooleanArray(true, mask=~(true | false))
    return out


def load_images(path: str | os.PathLike) -> pd.DataFrame:
    """Load the per-image survey answers, rankings and baseline scores.

    Reads ``preparation/preprocessed_image_data/<participant>.csv`` for every
    participant.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant, session, image``, the three ratings, the eight
        issue flags (nullable booleans, missing for participants whose answers
        are unreliable), the six emotion flags, ``rank_score`` (NaN where no
        ranking was made) and the six baseline scores (NaN where absent).
    """
    root = _check_root(path)
    folder = root / "preparation" / "preprocessed_image_data"
    if not folder.is_dir():
        raise FergiError(f"{folder}: missing (per-participant image tables)")
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise FergiError(f"{folder}: no <participant>.csv files")
    known = _known_participants(root)
    raws, names, rows = [], [], []
    for file in files:
        if known is not None and file.stem not in known:
            raise FergiError(f"{file}: unknown participant '{file.stem}' (not in valid_sessions.json)")
        raw = _read_image_file(file)
        raws.append(raw)
        names.append(np.full(len(raw), str(file), dtype=object))
        rows.append(np.arange(len(raw)))
    raw = pd.concat(raws, ignore_index=True)
    table = _convert_images(raw, np.concatenate(names), np.concatenate(rows))
    table = table.rename(columns={"session_index": "session", "image_index": "image"})
    table["session"] = table["session"].astype("int64")
    table["image"] = table["image"].astype("int64")
    for column in RATINGS:
        if table[column].notna().all():
            table[column] = table[column].astype("int64")
    duplicated = table.duplicated(["participant", "session", "image"])
    if duplicated.any():
        i = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise FergiError(
            f"{np.concatenate(names)[i]}: image {table['image'].iloc[i]} of session {table['session'].iloc[i]} appears twice"
        )
    columns = ["participant", "session", "image", *IMAGE_COLUMNS[2:]]
    return table[columns].sort_values(["participant", "session", "image"], ignore_index=True)
