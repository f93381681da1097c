"""``fergi annotate``: preference labels for image pairs from facial reactions alone."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Label which of two images a person preferred, for every pair of images shown in the
same session, from their facial reactions alone: no rankings or ratings are needed.

Input: a folder in the FERGI release layout (data/<participant>/session_<s>/
reaction_clip_<i>_features.csv, e.g. written by `fergi extract` or `fergi export`);
preparation/ is optional.

Output: JSON lines, one per pair:
  {"participant": "001", "session": 3, "image_a": 1, "image_b": 4, "preferred": 4,
   "score_difference": -0.31, "above_threshold": true}
score_difference is valence(image_a) - valence(image_b); above_threshold tells whether
the model is confident (|difference| reaches its abstention threshold). Train reward
models on the pairs with above_threshold true.

The default model is AUcomb fitted on the 30 screened participants of the public FERGI
release (k=0.5, w_AU4=0.5, threshold 0.26). It expects AU activations on the scale of
the release's AU model (the authors' IR-50 DISFA model, intensities 0-5); features from
another AU estimator should be used with a model fitted on them (`fergi fit`).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "annotate",
        help="pairwise preference labels from facial reactions (JSON lines)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="folder in the release layout (data/ with reaction clip features)")
    parser.add_argument("--model", metavar="FILE",
                        help="model file from `fergi fit` (default: the shipped AUcomb model, "
                             "fitted on the public release; expects AU activations on the scale "
                             "of the release's AU model)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output .jsonl file")
    parser.add_argument("--confident-only", action="store_true",
                        help="write only the pairs above the model's abstention threshold")
    parser.add_argument("--skip-single", action="store_true",
                        help="leave out participants with fewer than two valid images (they form "
                             "no pair) instead of stopping with an error")
    return parser


def run(args: argparse.Namespace) -> int:
    from fergi.preference import annotate_pairs, load_model, write_jsonl
    from fergi.preference._data import load_table

    model = load_model(args.model)
    table, _ = load_table(args.data, skip_single=args.skip_single)
    labels = annotate_pairs(table, model)
    n_all = len(labels)
    n_confident = int(labels["confident"].sum())
    if args.confident_only:
        labels = labels[labels["confident"]]
    path = write_jsonl(labels, args.out)
    print(f"{n_all} pairs from {table['participant'].nunique()} participants, "
          f"{n_confident} above the model's threshold; wrote {len(labels)} lines to {path}")
    return 0
