"""Recompute the paper's findings from a FERGI release (``fergi reproduce``)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fergi import FergiError, __version__
from fergi.datasets import (
    AU_NAMES,
    EMOTIONS,
    SCORE_COLUMNS,
    check_score_columns,
    fetch_fergi,
    load_excluded_images,
    load_frames,
    load_images,
)
from fergi.features import compute_activation_values, image_table, screen_participants
from fergi.plots import (
    plot_accuracy_coverage,
    plot_activation_by_emotion,
    plot_activation_by_rating,
)
from fergi.preference import attach_faunet, faunet_results, reproduce_paper_tables
from fergi.stats import reaction_statistics

logger = logging.getLogger(__name__)


@dataclass
class Reproduction:
    """Everything ``fergi reproduce`` computes.

    Attributes
    ----------
    results : dict
        The content of ``results.json``.
    table : pandas.DataFrame
        The per-image table (all participants, valid reaction clips).
    clips : pandas.DataFrame
        Activation values of every clip.
    statistics : pandas.DataFrame
        Output of :func:`fergi.stats.reaction_statistics`.
    timings : dict
        Seconds spent per stage.
    """

    results: dict
    table: pd.DataFrame
    clips: pd.DataFrame
    statistics: pd.DataFrame
    timings: dict = field(default_factory=dict)


def _clean(value):
    """JSON-safe value: NaN becomes null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _statistics_dict(stats: pd.DataFrame) -> dict:
    out: dict = {
        "threshold": stats.attrs.get("threshold"),
        "n_tests": stats.attrs.get("n_tests"),
        "rating": {},
        "extremity": {},
        "emotions": {},
    }
    for row in stats.itertuples(index=False):
        entry = {row.statistic_name: row.statistic, "p": row.p, "n": row.n, "significant": bool(row.significant)}
        if row.test in ("rating", "extremity"):
            out[row.test][row.au] = entry
        else:
            out["emotions"].setdefault(row.au, {})[row.test] = entry
    return out


def reproduce(
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = "fergi-results",
    *,
    preference: bool = True,
    figures: bool = True,
    download: bool = True,
    max_seen_before_s: float | None = 0.5,
) -> Reproduction:
    """Recompute the paper's findings (Sec. 6.1 and, with ``preference``, Sec. 6.2).

    Parameters
    ----------
    data : path-like, optional
        A FERGI release (or a study exported by ``fergi export``); by default
        :func:`fergi.datasets.fetch_fergi` finds or downloads the public one.
    out : path-like or None, default "fergi-results"
        Folder for ``results.json`` and the figures; None writes nothing.
    preference : bool, default True
        Also compute Tables 1 and 2 and FAU-Net (Sec. 6.2).
    figures : bool, default True
        Write the figures.
    download : bool, default True
        Allow downloading the release when it is not found.
    max_seen_before_s : float or None, default 0.5
        Leave out (and count, in a warning) reactions to an image seen before for
        longer than this: replays after an interrupted presentation in a study export.
        None keeps them.

    Returns
    -------
    Reproduction
    """
    timings = {}
    t0 = time.perf_counter()
    root = fetch_fergi(data, download=download)
    if out is not None:
        # Checked before the work, so a bad --out fails at once.
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FergiError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    frames = load_frames(root)
    images = load_images(root)
    invalid = load_excluded_images(root, max_seen_before_s)
    timings["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    clips = compute_activation_values(frames)
    if (clips["clip"] == "baseline").any():
        excluded = screen_participants(clips)
        screening = "baseline AU4"
    else:
        logger.warning("%s: no baseline clips, participant screening skipped", root)
        excluded, screening = [], "skipped (no baseline clips)"
    table = image_table(images, clips, invalid)
    timings["features"] = time.perf_counter() - t

    skip = _preference_skip_reason(table, excluded) if preference else None
    # FAU-Net (torch import and 33 x 300 epochs) is the longest step: train it in a second
    # process from now on, while this one computes the statistics, the tables and Figs. 3-4.
    pending_faunet = _start_faunet(table) if preference and not skip else None

    t = time.perf_counter()
    stats = reaction_statistics(table)
    timings["statistics"] = time.perf_counter() - t

    participants = sorted(str(p) for p in images["participant"].unique())
    results: dict = {
        "fergi_version": __version__,
        "data": str(root),
        "participants": {
            "all": len(participants),
            "screened_out": excluded,
            "screening": screening,
            "included": len(participants) - len(excluded),
        },
        "n_images": len(set(zip(images["participant"], images["session"], images["image"], strict=True)) - invalid),
        "n_reaction_clips_valid": len(table),
        "statistics": _statistics_dict(stats),
        # The release's Aesthetic_score and BLIP_score are untrained networks' output:
        # flagged per column, with the evidence, wherever they are reported.
        "score_columns": check_score_columns(images),
    }

    if skip:
        logger.info("preference tables skipped: %s", skip)
        results["preference_skipped"] = skip
        preference = False
    if preference:
        t = time.perf_counter()
        results.update(reproduce_paper_tables(table, excluded=excluded, faunet=False))
        timings["preference tables"] = time.perf_counter() - t

    written = []
    if out is not None and figures:
        # Figs. 3 and 4 need only the statistics: drawn while FAU-Net trains.
        t = time.perf_counter()
        written += _reaction_figures(table, stats, out)
        timings["figures 3-4"] = time.perf_counter() - t
    if preference:
        t = time.perf_counter()
        attach_faunet(results, _finish_faunet(pending_faunet, table))
        timings["FAU-Net (waited for)"] = time.perf_counter() - t

    if out is not None:
        if figures:
            t = time.perf_counter()
            if preference and "coverage" in results:
                written += plot_accuracy_coverage(results["coverage"], out / "accuracy_coverage")
            results["figures"] = [p.name for p in written]
            timings["accuracy-coverage figure"] = time.perf_counter() - t
        results["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        tmp = out / "results.json.tmp"
        try:
            tmp.write_text(json.dumps(_clean(results), indent=2) + "\n")
            tmp.replace(out / "results.json")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FergiError(f"{out / 'results.json'}: cannot write ({exc.strerror})") from None
    return Reproduction(results=results, table=table, clips=clips, statistics=stats, timings=timings)


def _preference_skip_reason(table: pd.DataFrame, excluded: list[str]) -> str | None:
    """Why Tables 1 and 2 cannot be computed on this data (None when they can).

    They compare against the six baseline scores and need rankings and at least two
    screened participants (leave-one-participant-out); a small study exported by
    ``fergi export`` may have none of these.
    """
    kept = table[~table["participant"].isin(excluded)]
    if kept["participant"].nunique() < 2:
        return "leave-one-participant-out needs at least 2 participants after screening"
    if kept["rank_score"].isna().all():
        return "the images have no rankings (rank_score)"
    missing = [c for c in SCORE_COLUMNS if c not in kept or kept[c].isna().any()]
    if missing:
        return f"baseline scores missing ({', '.join(missing)}); `fergi fit` evaluates AUcomb alone"
    return None


def _reaction_figures(table: pd.DataFrame, stats: pd.DataFrame, out: Path) -> list[Path]:
    written = plot_activation_by_rating(table, stats, out / "fig3_activation_by_rating")
    written += plot_activation_by_emotion(table, out / "fig4_activation_by_emotion", statistics=stats)
    return written


def _faunet(table: pd.DataFrame) -> dict:
    return faunet_results(table, sorted(table["participant"].astype(str).unique()))


def _start_faunet(table):
    import concurrent.futures
    import multiprocessing

    try:
        # spawn: torch holds threads that do not survive fork.
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return pool, pool.submit(_faunet, table)
    except (OSError, RuntimeError) as exc:  # no process support: train it in this one
        logger.debug("training FAU-Net in-process (%s)", exc)
        return None


def _finish_faunet(pending, table) -> dict:
    if pending is not None:
        pool, future = pending
        try:
            return future.result()
        except FergiError:
            raise
        except Exception as exc:  # a broken worker must not lose the results
            logger.debug("FAU-Net worker failed (%s); training in-process", exc)
        finally:
            pool.shutdown()
    return _faunet(table)


def _p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.4f}"


def format_statistics(results: dict) -> str:
    """Sec. 6.1 as terminal text: correlations with ratings and emotion tests."""
    s = results["statistics"]
    lines = [
        f"Sec. 6.1  AU activation vs survey answers ({results['n_reaction_clips_valid']} valid reaction clips; "
        f"Bonferroni: p < {s['threshold']:.2e} = 0.05 / {s['n_tests']}; * = significant)",
        "",
        f"{'AU':<6}{'rating rho':>12}{'p':>10}{'':2}{'|rating-4| rho':>16}{'p':>10}",
    ]
    for au in AU_NAMES:
        r, e = s["rating"][au], s["extremity"][au]
        lines.append(
            f"{au:<6}{r['rho']:>12.3f}{_p(r['p']):>10}{'*' if r['significant'] else ' ':2}"
            f"{e['rho']:>16.3f}{_p(e['p']):>10}{'*' if e['significant'] else ''}"
        )
    lines += ["", "Wilcoxon rank-sum z (emotion ticked vs not)", f"{'AU':<6}" + "".join(f"{e:>14}" for e in EMOTIONS)]
    for au in AU_NAMES:
        cells = []
        for emotion in EMOTIONS:
            entry = s["emotions"][au][emotion]
            cells.append(f"{entry['z']:>13.2f}{'*' if entry['significant'] else ' '}")
        lines.append(f"{au:<6}" + "".join(cells))
    lines += ["", "Significant:"]
    for test in ("rating", "extremity"):
        names = [au for au in AU_NAMES if s[test][au]["significant"]]
        label = "overall rating" if test == "rating" else "rating extremity"
        lines.append(f"  {label:<17} {', '.join(names) or '-'}")
    for emotion in EMOTIONS:
        names = [au for au in AU_NAMES if s["emotions"][au][emotion]["significant"]]
        lines.append(f"  {emotion:<17} {', '.join(names) or '-'}")
    return "\n".join(lines)


def format_score_columns(results: dict) -> str:
    """The score columns flagged as untrained output, with the evidence ("" when none)."""
    flagged = {c: e for c, e in results.get("score_columns", {}).items() if e["untrained_in_release"]}
    if not flagged:
        return ""
    lines = [f"Untrained score columns: {' and '.join(flagged)} of this data come from networks "
             "whose trained weights were never loaded; their accuracies in Tables 1 and 2 are "
             "chance (the paper's 51.39/49.78 and 49.92/49.92), not the scorers'."]
    for column, e in flagged.items():
        rhos = [abs(v) for v in e["spearman"].values() if v is not None]
        lines.append(
            f"  {column}: mean {e['mean']:.2g}, sd {e['sd']:.2g}; a trained network gives a {e['expected']}; "
            f"|Spearman rho| with the overall rating and every trained score <= {max(rhos, default=float('nan')):.3f}")
        lines.append(f"    why: {e['reason']}")
    return "\n".join(lines)


def format_summary(results: dict) -> str:
    """Data summary lines."""
    p = results["participants"]
    if p.get("screening", "baseline AU4") == "baseline AU4":
        screening = f"screened out for unreliable baseline AU4: {', '.join(p['screened_out']) or 'none'}"
    else:
        screening = f"screening {p['screening']}"
    return (
        f"Data: {results['data']}\n"
        f"  participants: {p['all']} ({screening})\n"
        f"  images: {results['n_images']} valid, {results['n_reaction_clips_valid']} with a valid reaction clip"
    )
