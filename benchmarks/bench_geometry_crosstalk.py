"""Benchmark: crosstalk matrix of the ``geometry`` AU estimator.

For each synthetic movement (an AU12 smile or an AU4 frown, ``fergi.face``'s
FaceMesh-driven thin-plate-spline warp of the astronaut photograph) at increasing
strengths, makes a 30 fps clip that is neutral for its first 20 % of frames and then
holds the movement (0.2 s onset), reads it with the geometry estimator WITHOUT a
baseline (the neutral face is the clip's least-expressive stable frames, as in
``fergi extract`` without --baseline-seconds) and prints the mean intensity of all 12
AUs over the held frames. Rows: movement and strength (1.0 = a broad smile, a marked
frown); columns: AU1..AU26. The ideal is the target AU alone; everything else in its
row is crosstalk (AU6, AU9 and AU17 are texture, not geometry, and pick up some).
``--reference baseline`` reads the same clips against their neutral frames instead,
to separate the estimator's own crosstalk from the choice of the neutral face.

Usage::

    python benchmarks/bench_geometry_crosstalk.py [--quick] [--reference baseline]
"""

from __future__ import annotations

import argparse
import sys

STRENGTHS = (0.25, 0.5, 0.75, 1.0, 1.5)
QUICK_STRENGTHS = (0.5, 1.0)
MOVEMENTS = (("smile", "AU12"), ("frown", "AU4"))
FPS = 30
NEUTRAL_FRAMES, EXPRESSION_FRAMES = 12, 48
ONSET_FRAMES = 6


def crosstalk(strengths=STRENGTHS, reference: str = "least_expressive"):
    """The crosstalk matrix: a DataFrame indexed by (movement, strength), AU columns."""
    import numpy as np
    import pandas as pd
    from skimage import data

    from fergi.au import GeometryAUEstimator
    from fergi.datasets import AU_NAMES
    from fergi.face import FaceAnalyzer, reaction_frames

    rows = {}
    with FaceAnalyzer() as analyzer:
        for kind, _target in MOVEMENTS:
            for strength in strengths:
                frames = reaction_frames(
                    data.astronaut(),
                    neutral_s=NEUTRAL_FRAMES / FPS,
                    expression_s=EXPRESSION_FRAMES / FPS,
                    fps=FPS,
                    **{kind: strength},
                )
                analyzer.reset()
                lms = np.stack([analyzer.process(f).landmarks for f in frames])
                est = GeometryAUEstimator()
                if reference == "baseline":
                    est.fit(lms[:NEUTRAL_FRAMES])
                aus = est.predict(lms)
                held = aus[NEUTRAL_FRAMES + ONSET_FRAMES :]
                rows[(kind, strength)] = np.nanmean(held, axis=0)
    index = pd.MultiIndex.from_tuples(list(rows), names=["movement", "strength"])
    return pd.DataFrame(list(rows.values()), index=index, columns=list(AU_NAMES))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"strengths {QUICK_STRENGTHS} only (for tests)"
    )
    parser.add_argument(
        "--reference",
        choices=("least_expressive", "baseline"),
        default="least_expressive",
        help="neutral face: the clip's least-expressive frames (default) or its known "
        "neutral frames, as a baseline clip would give",
    )
    args = parser.parse_args(argv)

    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    strengths = QUICK_STRENGTHS if args.quick else STRENGTHS
    matrix = crosstalk(strengths, args.reference)
    print(
        f"geometry estimator crosstalk, neutral reference: {args.reference}; mean AU "
        f"intensity (0-5) over the held movement ({EXPRESSION_FRAMES - ONSET_FRAMES} frames)"
    )
    header = f"{'movement':<8} {'strength':>8} " + " ".join(f"{au:>5}" for au in matrix.columns)
    print(header)
    print("-" * len(header))
    for (kind, strength), row in matrix.iterrows():
        print(f"{kind:<8} {strength:>8.2f} " + " ".join(f"{v:>5.2f}" for v in row))
    print()
    print("target share (target AU / sum of all 12) and largest other AU per row:")
    for (kind, strength), row in matrix.iterrows():
        target = dict(MOVEMENTS)[kind]
        others = row.drop(target)
        share = row[target] / row.sum() if row.sum() > 0 else float("nan")
        print(
            f"  {kind:<6} {strength:>4.2f}: {target} {row[target]:.2f}, share {share:.0%}, "
            f"largest other {others.idxmax()} {others.max():.2f}"
        )
    sys.stdout.flush()
    return matrix


if __name__ == "__main__":
    main()
