"""``fergi annotate``: preference labels for image pairs from facial reactions alone."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Label which of two images a person preferred, for every pair of images shown in the
same session, from their facial reactions alone: no rankings or ratings are needed.

Input: a folder in the FERGI release layout (data/<participant>/session_<s>/
{baseline,reaction}_clip_<i>_features.csv, e.g. written by `fergi extract` or
`fergi export`); preparation/ is optional.

Output: JSON lines, one per pair:
  {"participant": "001", "session": 3, "image_a": 1, "image_b": 4, "preferred": 4,
   "score_difference": -0.31, "above_threshold": true, "label_source": "reactions",
   "normalization": "baseline_median"}
score_difference is valence(image_a) - valence(image_b); above_threshold tells whether
the model is confident (|difference| reaches its abstention threshold). Train reward
models on the pairs with above_threshold true.

The default model is scale-free, so it works with features from any AU estimator: AUcomb
(AU4 and AU12) on activation values divided by each participant's median activation over
their own baseline clips, fitted on the 30 screened participants of the public FERGI
release. Participants with fewer than 3 valid baseline clips are labelled with its
quantile-mapped fallback (see --on-few-baselines). A model on raw values (`fergi fit
--normalization none`, or the paper's AUcomb on the release's IR-50 activation scale)
is refused on features of another AU estimator: features_meta.json, written by
`fergi extract` and the study, says which estimator made them.

--integrate labels the pairs whose two images have ImageReward, PickScore and HPS v2
scores with the integrated score (the ensemble of the three plus the valence score,
paper eq. 10): the most accurate labels; label_source says which pairs got them.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "annotate",
        help="pairwise preference labels from facial reactions (JSON lines)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="folder in the release layout (data/ with baseline and reaction "
                             "clip features)")
    parser.add_argument("--model", metavar="FILE",
                        help="model file from `fergi fit` (default: the shipped scale-free "
                             "AUcomb model, fitted on the public release)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output .jsonl file")
    parser.add_argument("--integrate", action="store_true",
                        help="integrated labels (ensemble of ImageReward, PickScore, HPS v2 "
                             "plus reactions, eq. 10) for pairs whose images have those scores")
    parser.add_argument("--confident-only", action="store_true",
                        help="write only the pairs above the model's abstention threshold")
    parser.add_argument("--on-few-baselines", choices=("fallback", "skip", "error"),
                        default="fallback",
                        help="participants with too few baseline clips to normalise: label them "
                             "with the model's quantile fallback (default), leave them out, or stop")
    parser.add_argument("--force-scale", action="store_true",
                        help="annotate even when a raw model's AU scale does not match the "
                             "features' estimator (labels are then not what the model promises)")
    parser.add_argument("--skip-single", action="store_true",
                        help="leave out participants with fewer than two valid images (they form "
                             "no pair) instead of stopping with an error")
    parser.add_argument("--max-seen-before", type=float, default=0.5, metavar="SECONDS",
                        help="leave out reactions to an image the participant had seen before for "
                             "longer than this (a replay after an interrupted presentation, from a "
                             "study export's study/clips.csv; default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
    from fergi.preference import annotate_reactions, load_model, load_reaction_data, write_jsonl

    model = load_model(args.model)
    data, _ = load_reaction_data(args.data, skip_single=args.skip_single,
                                 max_seen_before_s=args.max_seen_before)
    labels = annotate_reactions(data, model, integrate=args.integrate,
                                on_few_baselines=args.on_few_baselines, force=args.force_scale)
    n_all = len(labels)
    n_confident = int(labels["confident"].sum())
    n_integrated = int((labels["label_source"] == "integrated").sum())
    n_people = labels["participant"].nunique()
    if args.confident_only:
        labels = labels[labels["confident"]]
    path = write_jsonl(labels, args.out)
    integrated = f", {n_integrated} integrated with the scores" if args.integrate else ""
    print(f"Features: {data.provenance.describe()}")
    print(f"{n_all} pairs from {n_people} participants"
          f"{integrated}, {n_confident} above the model's threshold; wrote {len(labels)} lines to {path}")
    return 0
