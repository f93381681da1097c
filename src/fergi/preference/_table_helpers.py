"""Small helpers on image tables and fitted valence models, shared by the annotation model and its evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fergi.datasets import (
    FeatureProvenance,
)
from fergi.preference._base import PreferenceModel
from fergi.preference._ensemble import ENSEMBLE_COLUMNS
from fergi.preference._pairs import pair_index


def _preprocessing(provenance: FeatureProvenance) -> str:
    # Meta files written before the choice existed were made with fergi's preprocessing.
    return provenance.preprocessing or "fergi"


def _finite(table: pd.DataFrame, columns) -> pd.Series:
    columns = list(columns)
    if any(c not in table.columns for c in columns):
        return pd.Series(False, index=table.index)
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return pd.Series(np.isfinite(values).all(axis=1), index=table.index)


def _usable(table: pd.DataFrame, columns, *, ranked: bool) -> pd.DataFrame:
    keep = _finite(table, columns)
    if ranked:
        if "rank_score" not in table.columns:
            return table.iloc[0:0]
        keep &= pd.to_numeric(table["rank_score"], errors="coerce").notna()
    return table[keep].reset_index(drop=True)


def _has_scores(table: pd.DataFrame) -> bool:
    return bool(len(table)) and bool(_finite(table, ENSEMBLE_COLUMNS).all())


def _pair_diffs(scores: np.ndarray, table: pd.DataFrame):
    pairs = pair_index(table)
    return scores[pairs.a] - scores[pairs.b], pairs.sign


def _threshold(model: PreferenceModel) -> float:
    threshold = model.abstention_threshold
    return 0.0 if threshold is None else float(threshold)
