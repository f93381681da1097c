"""Decided label chunks to the rows of the Pick-a-Pic-style formats (images, pseudonyms)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fergi.preference.export._columns import FEATURE_COLUMNS, FERGI_COLUMNS, PICKAPIC_COLUMNS
from fergi.preference.export._privacy import _digest, _int_id, pseudonym
from fergi.preference.export._study import ImageStore


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
