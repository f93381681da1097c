"""Loaders of the FERGI release layout into tidy pandas tables.

The layout (the public release, and what ``fergi export`` writes)::

    data/<participant>/session_<s>/baseline_clip_<i>_features.csv
    data/<participant>/session_<s>/reaction_clip_<i>_features.csv
    preparation/valid_sessions.json        {participant: [session, ...]}
    preparation/invalid_images.json        {participant: {session: [image, ...]}}
    preparation/preprocessed_image_data/<participant>.csv

Only these are inputs. The derived files of the release
(``preprocessed_reaction_data``, ``preprocessed_baseline_data``,
``AU4_excluded_participants.json``) are never read: fergi recomputes them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from fergi._errors import FergiError
from fergi.schema import (
    AU_NAMES,
    CLIP_KINDS,
    FRAME_COLUMNS,
)

logger = logging.getLogger(__name__)


_CLIP_FILE = re.compile(r"^(baseline|reaction)_clip_(\d+)_features\.(csv|parquet)$")
_SESSION_DIR = re.compile(r"^session_(\d+)$")
_HEADER = (",".join(FRAME_COLUMNS)).encode()
_FLOAT_COLUMNS = FRAME_COLUMNS[1:]


def _check_root(path: str | os.PathLike) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise FergiError(f"{root}: no such folder (expected a FERGI release with a data/ folder)")
    if not (root / "data").is_dir():
        raise FergiError(f"{root}: not a FERGI release (no data/ folder inside)")
    return root


def list_clip_files(path: str | os.PathLike, *, participants: Iterable[str] | None = None) -> pd.DataFrame:
    """List the per-frame feature files of a release.

    Parameters
    ----------
    path : path-like
        Root of the release (the folder holding ``data/``).
    participants : iterable of str, optional
        Restrict to these participant IDs.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant, session, image, clip, path``, sorted by the first four.
    """
    root = _check_root(path)
    data = root / "data"
    wanted = None if participants is None else {str(p) for p in participants}
    known = _known_participants(root)
    rows = []
    for pdir in sorted(data.iterdir()):
        if not pdir.is_dir() or pdir.name.startswith("."):
            continue
        participant = pdir.name
        if known is not None and participant not in known:
            raise FergiError(
                f"{pdir}: unknown participant folder '{participant}' "
                "(not listed in preparation/valid_sessions.json)"
            )
        if wanted is not None and participant not in wanted:
            continue
        for sdir in pdir.iterdir():
            match = _SESSION_DIR.match(sdir.name)
            if not sdir.is_dir():
                continue
            if not match:
                raise FergiError(f"{sdir}: unexpected folder (session folders are named session_<n>)")
            session = int(match.group(1))
            for f in sdir.iterdir():
                m = _CLIP_FILE.match(f.name)
                if not m:
                    # features_meta.json says which AU estimator made the files beside it.
                    if not f.name.startswith(".") and f.name != "features_meta.json":
                        logger.warning("%s: ignored (not a per-frame feature file)", f)
                    continue
                rows.append((participant, session, int(m.group(2)), m.group(1), str(f)))
    if wanted is not None:
        missing = wanted - {r[0] for r in rows}
        if missing:
            raise FergiError(f"{data}: no feature files for participant(s) {', '.join(sorted(missing))}")
    table = pd.DataFrame(rows, columns=["participant", "session", "image", "clip", "path"])
    if table.empty:
        raise FergiError(f"{data}: no per-frame feature files (*_clip_<i>_features.csv)")
    duplicated = table.duplicated(["participant", "session", "image", "clip"], keep=False)
    if duplicated.any():
        raise FergiError(f"{table.loc[duplicated, 'path'].iloc[0]}: the same clip is stored twice (csv and parquet)")
    return table.sort_values(["participant", "session", "image", "clip"], ignore_index=True)


def _known_participants(root: Path) -> set[str] | None:
    path = root / "preparation" / "valid_sessions.json"
    if not path.exists():
        return None
    return set(_read_json(path))


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _convert_options() -> pacsv.ConvertOptions:
    types = {"frame": pa.int64(), **{c: pa.float64() for c in _FLOAT_COLUMNS}}
    return pacsv.ConvertOptions(column_types=types, strings_can_be_null=False)


def _parse_one(path: str, raw: bytes) -> pd.DataFrame:
    """Parse one per-frame file with full validation (slow path, names the file)."""
    if path.endswith(".parquet"):
        try:
            table = pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # pyarrow raises many types for a corrupt file
            raise FergiError(f"{path}: unreadable parquet file ({exc.__class__.__name__})") from None
    else:
        if not raw.strip():
            raise FergiError(f"{path}: empty file")
        try:
            table = pacsv.read_csv(
                io.BytesIO(raw),
                parse_options=pacsv.ParseOptions(ignore_empty_lines=True),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
            ).to_pandas()
        except pa.ArrowInvalid as exc:
            reason = str(exc).splitlines()[0]
            raise FergiError(f"{path}: malformed CSV ({reason})") from None
    missing = [c for c in FRAME_COLUMNS if c not in table.columns]
    if missing:
        raise FergiError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise FergiError(f"{path}: no frames (header only)")
    table = table[list(FRAME_COLUMNS)]
    for column in FRAME_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce")
        if column in AU_NAMES and values.isna().all():
            # An AU the estimator does not have (e.g. an imported OpenFace version without
            # AU26): empty in every row. Models that read it refuse these features.
            table[column] = np.nan
            continue
        bad = values.isna() & table[column].notna() | table[column].isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise FergiError(
                f"{path}: non-numeric value {table[column].iloc[row]!r} in column '{column}' "
                f"(data row {row + 1})"
            )
        if not np.isfinite(values.to_numpy(dtype=float)).all():
            row = int(np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))[0])
            raise FergiError(
                f"{path}: non-finite value {table[column].iloc[row]!r} in column '{column}' "
                f"(data row {row + 1})"
            )
        table[column] = values
    table["frame"] = table["frame"].astype("int64")
    return table


def _fast_bodies(paths: list[str], raws: list[bytes]) -> tuple[list[bytes], list[int]] | None:
    """Strip identical headers and count rows; None when a file needs the slow path."""
    header = _HEADER
    bodies, counts = [], []
    for path, raw in zip(paths, raws, strict=True):
        if not path.endswith(".csv") or not raw.startswith(header):
            return None
        cut = len(header)
        if raw[cut : cut + 2] == b"\r\n":
            return None
        if raw[cut : cut + 1] != b"\n":
            return None
        body = raw[cut + 1 :]
        if not body.endswith(b"\n"):
            body += b"\n"
        n = body.count(b"\n")
        if n == 0 or b"\n\n" in body:
            return None
        bodies.append(body)
        counts.append(n)
    return bodies, counts


def load_frames(
    path: str | os.PathLike,
    *,
    participants: Iterable[str] | None = None,
    clips: Iterable[str] = CLIP_KINDS,
    n_threads: int | None = None,
) -> pd.DataFrame:
    """Load every per-frame feature file of a release into one table.

    Parameters
    ----------
    path : path-like
        Root of the release (the folder holding ``data/``).
    participants : iterable of str, optional
        Only these participant IDs (``"001"``, ...). Default: all.
    clips : iterable of {"baseline", "reaction"}, default both
        Which clip kinds to load.
    n_threads : int, optional
        Threads used to read files (default: 8, reading is I/O bound).

    Returns
    -------
    pandas.DataFrame
        Columns ``participant, session, image, clip`` followed by the release's
        per-frame columns (:data:`fergi.datasets.FRAME_COLUMNS`), sorted by clip and
        frame order.

    Raises
    ------
    FergiError
        A missing folder, an unknown participant folder, an empty file, a missing
        column or a non-numeric value; the message names the file.
    """
    clips = tuple(clips)
    unknown = set(clips) - set(CLIP_KINDS)
    if unknown:
        raise FergiError(f"clips: unknown clip kind(s) {sorted(unknown)} (use baseline, reaction)")
    files = list_clip_files(path, participants=participants)
    files = files[files["clip"].isin(clips)].reset_index(drop=True)
    if files.empty:
        kinds = " or ".join(f"{kind}_clip_<i>_features" for kind in clips)
        raise FergiError(f"{Path(path) / 'data'}: no {kinds} files")
    paths = files["path"].tolist()
    with ThreadPoolExecutor(max_workers=n_threads or 8) as pool:
        raws = list(pool.map(_read_bytes, paths))

    fast = _fast_bodies(paths, raws)
    table = None
    if fast is not None:
        bodies, counts = fast
        try:
            parsed = pacsv.read_csv(
                io.BytesIO(b"".join(bodies)),
                read_options=pacsv.ReadOptions(column_names=list(FRAME_COLUMNS)),
                parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
                convert_options=_convert_options(),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            parsed = None  # find and name the bad file below
        if parsed is not None and parsed.num_rows == sum(counts) and sum(c.null_count for c in parsed.columns) == 0:
            candidate = parsed.to_pandas()
            # inf/nan parse as floats but are never valid features: the slow path names the file.
            if np.isfinite(candidate[list(_FLOAT_COLUMNS)].to_numpy()).all():
                table = candidate
                lengths = np.asarray(counts)
    if table is None:
        parts = [_parse_one(p, r) for p, r in zip(paths, raws, strict=True)]
        lengths = np.asarray([len(p) for p in parts])
        table = pd.concat(parts, ignore_index=True)

    keys = pd.DataFrame(
        {
            "participant": pd.Categorical(np.repeat(files["participant"].to_numpy(), lengths)),
            "session": np.repeat(files["session"].to_numpy(), lengths),
            "image": np.repeat(files["image"].to_numpy(), lengths),
            "clip": pd.Categorical(np.repeat(files["clip"].to_numpy(), lengths), categories=list(CLIP_KINDS)),
        }
    )
    out = pd.concat([keys, table], axis=1)
    out.attrs["source"] = str(Path(path))
    return out


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise FergiError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise FergiError(f"{path}: cannot read ({exc.strerror})") from None
