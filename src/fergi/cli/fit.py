"""``fergi fit``: fit an annotation model on labelled reactions, with its strict LOPO accuracy."""

from __future__ import annotations

import argparse
import sys

from fergi import FergiError

DESCRIPTION = """\
Fit a model that predicts which of two images a person preferred from their facial
reactions, on labelled data in the FERGI release layout (per-frame AU features under
data/, with the baseline clips, and rankings in preparation/preprocessed_image_data/).

Before fitting on everyone, the model is evaluated with strict leave-one-participant-out
(LOPO): for each participant in turn, everything (normaliser, model parameters,
thresholds, ensemble weights) is fitted on the others and tested on them. The printed
accuracies come with 95 % participant-bootstrap intervals:
  selective     accuracy on the pairs above the model's abstention threshold
  independent   accuracy on all pairs
  integrated    the model integrated with the ImageReward/PickScore/HPS v2 ensemble
                (eq. 10), when the images have those scores

Models (--model):
  aucomb    AUcomb valence score from AU4 and AU12 (paper eqs. 3-6) with an abstention
            threshold, grid-searched on n_correct - 2 n_incorrect (eq. 9).
  linear12  L2 pairwise logistic model on the square roots of all 12 AU activations,
            its regularisation chosen by an inner LOPO on the training participants.
  faunet    FAU-Net, the authors' small network over all 12 AU activations.

Normalisation (--normalization) makes a model valid for any AU estimator:
  baseline_median  (default) each participant's activation values are divided by the
                   median of their own baseline clips (the study records a baseline
                   before every image); a quantile-mapped model is stored as the
                   fallback for participants with too few baseline clips.
  quantile         each participant's per-frame AU values are mapped through their own
                   distribution onto a reference stored with the model.
  none             raw activation values (the paper): only valid on features of the
                   AU estimator it was fitted on; the model file records which.

Examples:
  fergi fit --data ../fergi-public --model aucomb --out aucomb.json
  fergi fit --data study-export/ --model linear12 --out linear12.json
  fergi fit --data ../fergi-public --normalization none --out paper-aucomb.json
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fit",
        help="fit an annotation model on labelled reactions (prints strict LOPO accuracy)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="folder in the release layout (data/ and preparation/)")
    parser.add_argument("--model", choices=("aucomb", "linear12", "faunet"), default="aucomb",
                        help="valence model to fit (default: %(default)s)")
    parser.add_argument("--normalization", choices=("baseline_median", "quantile", "none"),
                        default="baseline_median",
                        help="how activation values are made scale-free (default: %(default)s)")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="model file to write (.json), or a folder (receives model.json)")
    parser.add_argument(
        "--screen", choices=("auto", "on", "off"), default="auto",
        help="leave out participants whose AU4 is unreliable at rest (paper Sec. 6.2.1); "
             "auto: on for aucomb and linear12, off for faunet (as published)",
    )
    parser.add_argument("--min-baseline-clips", type=int, default=3, metavar="N",
                        help="baseline_median: valid baseline clips a participant needs "
                             "(default: %(default)s)")
    parser.add_argument("--no-fallback", action="store_true",
                        help="baseline_median: store no quantile fallback model")
    parser.add_argument("--no-integration", action="store_true",
                        help="do not fit the integration with the baseline-score ensemble")
    parser.add_argument("--no-lopo", action="store_true", help="skip the LOPO evaluation")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="B",
                        help="participant-bootstrap replicates for the intervals (default: %(default)s)")
    parser.add_argument("--skip-single", action="store_true",
                        help="leave out participants with fewer than two valid images (they form "
                             "no pair) instead of stopping with an error")
    parser.add_argument("--max-seen-before", type=float, default=0.5, metavar="SECONDS",
                        help="leave out reactions to an image the participant had seen before for "
                             "longer than this (a replay after an interrupted presentation, from a "
                             "study export's study/clips.csv; default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
    from fergi.preference import (
        AnnotationModel,
        default_valence,
        evaluate_lopo,
        format_evaluation,
        load_reaction_data,
        participant_summary,
        save_model,
    )

    out = Path(args.out)
    if out.exists() and not out.is_dir() and out.suffix.lower() != ".json":
        # Checked before the (long) fit, not after it.
        raise FergiError(f"--out {out}: exists and is not a folder or a .json file")
    if args.min_baseline_clips < 1:
        raise FergiError(f"--min-baseline-clips must be at least 1, got {args.min_baseline_clips}")
    if args.bootstrap < 100:
        raise FergiError(f"--bootstrap must be at least 100, got {args.bootstrap}")
    screen = args.screen == "on" or (args.screen == "auto" and args.model != "faunet")
    data, excluded = load_reaction_data(args.data, screen=screen, need_rankings=True,
                                        skip_single=args.skip_single,
                                        max_seen_before_s=args.max_seen_before)
    print(f"Features: {data.provenance.describe()}")
    if args.normalization == "none" and data.provenance.estimator == "mixed":
        raise FergiError(f"{args.data}: features from several AU estimators ({data.provenance.source}); "
                         "a model on raw values needs one scale (use --normalization baseline_median)")
    if excluded:
        print(f"Screened out (unreliable AU4 at rest): {', '.join(excluded)}")
        data = data.subset([p for p in data.participants if p not in excluded])
    model = AnnotationModel(
        default_valence(args.model, args.normalization), args.normalization,
        min_baseline_clips=args.min_baseline_clips,
        fallback="none" if args.no_fallback else "quantile",
        integrate=not args.no_integration,
    )
    metadata = {"data": str(args.data), "excluded_participants": excluded,
                "n_participants": len(data.participants)}
    if not args.no_lopo:
        print(f"Strict leave-one-participant-out evaluation: {len(data.participants)} folds ...",
              file=sys.stderr, flush=True)
        result = evaluate_lopo(model, data, n_boot=args.bootstrap)
        per = participant_summary(result)
        print(per.to_string(index=False))
        print(format_evaluation(result))
        metadata["strict_lopo"] = {k: result[k] for k in ("n_pairs", "selective", "independent",
                                                          "integrated", "integrated_selective",
                                                          "at_coverage") if k in result}
    model.fit(data)
    path = save_model(model, args.out, metadata=metadata)
    print(f"Fitted on all {model.n_pairs_} pairs of {model.n_participants_} participants: "
          f"{model.describe()}")
    print(f"Wrote {path}")
    return 0
