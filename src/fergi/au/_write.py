"""Writing a per-frame feature table exactly as the release does (number formatting, atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.schema import FRAME_COLUMNS


def _check_table(table: pd.DataFrame, path: Path) -> None:
    if tuple(table.columns) != FRAME_COLUMNS:
        raise FergiError(
            f"{path}: table columns must be exactly {', '.join(FRAME_COLUMNS)}; got {', '.join(map(str, table.columns))}"
        )


def format_features_csv(table: pd.DataFrame, *, decimals: int = 2) -> str:
    """The CSV text of a per-frame table, formatted exactly like the release.

    ``frame`` is an integer, ``timestamp`` has 3 decimals, the other values
    ``decimals`` (2 in the release's baseline clips, 3 in its reaction clips);
    a row without a face is written ``frame,timestamp,0,-1,-1,...`` and a missing
    value in a row with a face as ``-1``.
    """
    n = len(table)
    header = ",".join(FRAME_COLUMNS)
    if n == 0:
        return header + "\n"
    frame = table["frame"].to_numpy().astype(np.int64).astype(str)
    ts = np.char.mod("%.3f", table["timestamp"].to_numpy(dtype=float))
    vals = table[list(FRAME_COLUMNS[2:])].to_numpy(dtype=float)
    text = np.char.mod(f"%.{decimals}f", vals).astype(object)
    text[vals == -1.0] = "-1"
    no_face = vals[:, 0] == 0
    text[no_face, 0] = "0"
    cols = [frame, ts] + [text[:, j].astype(str) for j in range(text.shape[1])]
    rows = cols[0].astype(object)
    for c in cols[1:]:
        rows = rows + "," + c.astype(object)
    return header + "\n" + "\n".join(rows) + "\n"


def write_features(table: pd.DataFrame, path: str | os.PathLike, *, decimals: int = 2) -> Path:
    """Write a per-frame table atomically, as CSV (release formatting) or Parquet.

    Parameters
    ----------
    table : pandas.DataFrame
        Columns exactly ``FRAME_COLUMNS`` (as from :func:`extract_features`).
    path : str or path-like
        ``.csv`` or ``.parquet``. Written to a temporary file in the same folder and
        renamed, so a crash never leaves a half-written file under ``path``.
    decimals : int, default 2
        Decimals of the values after ``timestamp`` in CSV (Parquet stores them
        rounded to the same decimals).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    fergi.FergiError
        Wrong columns or unknown suffix.
    """
    path = Path(path)
    _check_table(table, path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise FergiError(f"{path}: unknown feature file suffix {suffix!r} (use .csv or .parquet)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if suffix == ".csv":
            tmp.write_text(format_features_csv(table, decimals=decimals), encoding="utf-8")
        else:
            out = pd.DataFrame(
                {
                    "frame": table["frame"].astype(np.int64),
                    "timestamp": table["timestamp"].astype(float).round(3),
                    **{c: table[c].astype(float).round(decimals) for c in FRAME_COLUMNS[2:]},
                }
            )
            out.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
