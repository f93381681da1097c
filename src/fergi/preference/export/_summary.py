"""What an export wrote (:class:`ExportSummary`), and the one-line warning about ties."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fergi.preference.export._labels import LabelPlan


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


def tie_warning(summary: ExportSummary) -> str | None:
    """One line on the 0.5/0.5 ties of a Pick-a-Pic-style export and who misreads them."""
    if not summary.n_ties or summary.format not in ("pickapic", "hf"):
        return None
    return (f"{summary.out}: {summary.n_ties} of {summary.n_rows} rows are 0.5/0.5 ties; "
            "diffusers' train_diffusion_dpo.py trains on a tie as \"jpg_0 preferred\" (it swaps "
            "the images only when label_0 == 0): keep label_0 in (0, 1) before DPO training, or "
            "export with --abstentions drop (README.md, \"Ties\")")
