"""Figures 3 and 4 of the paper: activation values by rating and by emotion."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fergi.plots._common import pyplot, save_figure
from fergi.schema import AU_NAMES, EMOTIONS, activation_column

_BLUE = "#1f5fa8"
_BROWN = "#8c5a2b"
_GREY = "#b8b8b8"


def _shade(color: str, strength: float):
    """Mix ``color`` with white: strength 0 is pale, 1 is the full colour."""
    from matplotlib.colors import to_rgb

    rgb = np.asarray(to_rgb(color))
    return tuple(1 - (0.2 + 0.8 * strength) * (1 - rgb))


def plot_activation_by_rating(
    table: pd.DataFrame,
    statistics: pd.DataFrame,
    path_stem: str | os.PathLike,
    *,
    rating: str = "overall_rating",
    ratings: Sequence[int] = (1, 2, 3, 4, 5, 6, 7),
    midpoint: float = 4.0,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Fig. 3: boxplots of activation value per rating for the significant AUs.

    One panel per AU significant for the rating or for its extremity. Boxes are
    blue for AUs significant for the rating, brown for the extremity, and split
    blue/brown for AUs significant for both; darker boxes mark the ratings
    associated with higher activation (the sign of the correlation, or the
    extreme ratings). The x labels give the number of images per rating.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per image (:func:`fergi.features.image_table`).
    statistics : pandas.DataFrame
        Output of :func:`fergi.stats.reaction_statistics`.
    path_stem : path-like
        Output path without suffix; one file per format is written.

    Returns
    -------
    list of pathlib.Path
    """
    plt = pyplot()
    sig = statistics[statistics["significant"]]
    by_rating = set(sig.loc[sig["test"] == "rating", "au"])
    by_extremity = set(sig.loc[sig["test"] == "extremity", "au"])
    panels = [au for au in AU_NAMES if au in by_rating | by_extremity]
    values = pd.to_numeric(table[rating], errors="coerce")
    counts = [int((values == r).sum()) for r in ratings]
    ncols = min(4, max(1, len(panels)))
    nrows = max(1, int(np.ceil(len(panels) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows), squeeze=False)
    positions = np.arange(1, len(ratings) + 1)
    ranks = np.linspace(0, 1, len(ratings))
    extremity = np.abs(np.asarray(ratings, dtype=float) - midpoint)
    extremity = extremity / extremity.max() if extremity.max() > 0 else extremity
    for k, au in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        column = activation_column(au)
        data = [table.loc[values == r, column].dropna().to_numpy() for r in ratings]
        boxes = ax.boxplot(
            data, positions=positions, widths=0.6, patch_artist=True, showfliers=False,
            medianprops={"color": "black", "linewidth": 1.2},
        )
        rho = statistics.loc[(statistics["au"] == au) & (statistics["test"] == "rating"), "statistic"]
        positive = float(rho.iloc[0]) >= 0 if len(rho) else True
        for i, box in enumerate(boxes["boxes"]):
            blue = _shade(_BLUE, ranks[i] if positive else 1 - ranks[i])
            brown = _shade(_BROWN, extremity[i])
            if au in by_rating and au in by_extremity:
                box.set_facecolor(blue)
                box.set_edgecolor(brown)
                box.set_linewidth(2.4)
            elif au in by_rating:
                box.set_facecolor(blue)
            else:
                box.set_facecolor(brown)
        kinds = [name for name, s in (("rating", by_rating), ("extremity", by_extremity)) if au in s]
        letter = chr(ord("a") + k)
        ax.set_title(f"({letter}) {au}: {' & '.join(kinds)}", fontsize=10)
        ax.set_xticks(positions, [f"{r}\n({c})" for r, c in zip(ratings, counts, strict=True)], fontsize=7)
        ax.set_xlabel(f"{rating.replace('_', ' ')} (number of images)", fontsize=8)
        ax.set_ylabel("activation value", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    if not panels:
        threshold = statistics.attrs.get("threshold")
        bound = f" (p < {threshold:.2g})" if threshold else ""
        axes[0][0].text(0.5, 0.5, f"No AU is significantly correlated with the\nrating or its extremity{bound}.",
                        ha="center", va="center", fontsize=10, transform=axes[0][0].transAxes)
    fig.suptitle(
        "AU activation value by overall rating (blue: significant for the rating, "
        "brown: for its extremity; darker = higher activation)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path_stem, formats)


def plot_activation_by_emotion(
    table: pd.DataFrame,
    path_stem: str | os.PathLike,
    *,
    aus: Sequence[str] = AU_NAMES,
    emotions: Sequence[str] = EMOTIONS,
    statistics: pd.DataFrame | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Fig. 4: for each emotion, paired boxplots per AU (ticked vs not ticked).

    The legend gives the number of images of each kind; with ``statistics``
    (:func:`fergi.stats.reaction_statistics`), AUs with a significant difference
    are marked with an asterisk.

    Returns
    -------
    list of pathlib.Path
    """
    plt = pyplot()
    from matplotlib.patches import Patch

    ncols = 2
    nrows = int(np.ceil(len(emotions) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.1 * nrows), squeeze=False)
    x = np.arange(len(aus))
    for k, emotion in enumerate(emotions):
        ax = axes[k // ncols][k % ncols]
        flags = table[emotion].astype("boolean").fillna(False).to_numpy(dtype=bool)
        n_yes, n_no = int(flags.sum()), int((~flags).sum())
        yes = [table.loc[flags, activation_column(au)].dropna().to_numpy() for au in aus]
        no = [table.loc[~flags, activation_column(au)].dropna().to_numpy() for au in aus]
        style = {"widths": 0.34, "patch_artist": True, "showfliers": False,
                 "medianprops": {"color": "black", "linewidth": 1.1}}
        left = ax.boxplot(yes, positions=x - 0.19, **style)
        right = ax.boxplot(no, positions=x + 0.19, **style)
        for box in left["boxes"]:
            box.set_facecolor("#d9822b")
        for box in right["boxes"]:
            box.set_facecolor(_GREY)
        labels = []
        for au in aus:
            mark = ""
            if statistics is not None:
                row = statistics[(statistics["au"] == au) & (statistics["test"] == emotion)]
                if len(row) and bool(row["significant"].iloc[0]):
                    mark = "*"
            labels.append(au.replace("AU", "") + mark)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlabel("AU (* significant)" if statistics is not None else "AU", fontsize=8)
        ax.set_ylabel("activation value", fontsize=8)
        ax.set_title(f"({chr(ord('a') + k)}) {emotion}", fontsize=10)
        ax.legend(
            handles=[
                Patch(facecolor="#d9822b", edgecolor="black", label=f"{emotion} ({n_yes})"),
                Patch(facecolor=_GREY, edgecolor="black", label=f"not {emotion} ({n_no})"),
            ],
            fontsize=8,
            loc="upper right",
        )
        ax.grid(axis="y", alpha=0.3)
    for k in range(len(emotions), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    fig.suptitle("AU activation value by reported emotion", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_stem, formats)
