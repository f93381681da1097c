"""Accuracy versus coverage of every preference score (the authors' results analysis)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fergi.plots._common import pyplot, save_figure

# name -> (colour, line width, line style, z-order); unknown names get a grey thin line.
_STYLE = {
    "CLIP": ("#9e9e9e", 1.0, (0, (1, 1.5)), 2),
    "Aesthetic": ("#bdbdbd", 1.0, (0, (3, 1.5)), 2),
    "BLIP": ("#7f7f7f", 1.0, (0, (5, 2, 1, 2)), 2),
    "ImageReward": ("#6baed6", 1.2, "-", 3),
    "PickScore": ("#2171b5", 1.2, "-", 3),
    "HPSv2": ("#08306b", 1.2, "-", 3),
    "Ensemble": ("#000000", 1.8, "-", 4),
    "AUcomb": ("#d62728", 2.4, "-", 6),
    "Ensemble + AUcomb": ("#7b3294", 2.0, "-", 5),
    "FAU-Net": ("#ff7f0e", 1.8, (0, (4, 1.5)), 5),
    "Ensemble + FAU-Net": ("#a6611a", 1.8, (0, (4, 1.5)), 5),
}


def plot_accuracy_coverage(coverage: dict, path_stem: str | os.PathLike, *,
                           formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Accuracy on the top x % of pairs by |score difference|, for every score.

    Parameters
    ----------
    coverage : dict
        ``results["coverage"]`` of :func:`fergi.preference.reproduce_paper_tables`:
        ``curves`` {name: {percent, accuracy, n_pairs}}, ``n_pairs``, ``n_participants``,
        optionally ``operating_point`` (Table 1) and ``faunet`` (curves over all participants).
    path_stem : path-like
        Output path without suffix; one file per format is written.
    formats : sequence of str
        Matplotlib formats (default PNG and PDF).

    Returns
    -------
    list of Path
        The files written.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.2, 4.6))
    groups = [(coverage.get("curves", {}), coverage.get("n_participants"))]
    if "faunet" in coverage:
        groups.append((coverage["faunet"].get("curves", {}), coverage["faunet"].get("n_participants")))
    first_n = groups[0][1]
    for curves, n_participants in groups:
        for name, curve in curves.items():
            color, width, style, z = _STYLE.get(name, ("#9e9e9e", 1.0, "-", 2))
            label = name if n_participants == first_n else f"{name} ({n_participants} participants)"
            ax.plot(curve["percent"], curve["accuracy"], color=color, lw=width, ls=style,
                    zorder=z, label=label)
    point = coverage.get("operating_point")
    if point:
        ax.plot([point["percent"]], [point["accuracy"]], marker="*", ms=13, color="#d62728",
                mec="white", mew=0.8, zorder=8, ls="none", label=point.get("label", "operating point"))
        ax.annotate(f"{point['accuracy']:.2f}% on {point['percent']:.2f}% of pairs",
                    (point["percent"], point["accuracy"]), xytext=(8, -58),
                    textcoords="offset points", fontsize=8.5, color="#d62728",
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "#d62728", "lw": 0.6},
                    arrowprops={"arrowstyle": "-", "color": "#d62728", "lw": 0.6}, zorder=9)
    ax.axhline(50, color="#444444", lw=0.8, ls=":", zorder=1)
    ax.text(99, 50.4, "chance", ha="right", va="bottom", fontsize=8, color="#444444")
    ax.set_xlim(0, 100)
    ax.set_xlabel("coverage: share of pairs predicted, largest |score difference| first (%)")
    ax.set_ylabel("accuracy on those pairs (%)")
    n_pairs = coverage.get("n_pairs")
    title = "Preference accuracy versus coverage (leave-one-participant-out)"
    if n_pairs:
        title += f"\n{n_pairs} pairs of {first_n} screened participants"
    ax.set_title(title, fontsize=10.5)
    ax.grid(True, color="#e6e6e6", lw=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path_stem, formats)
