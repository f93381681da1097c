"""``fergi fit``: fit a preference model on labelled reactions and report its LOPO accuracy."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Fit a model that predicts which of two images a person preferred from their facial
reactions, on labelled data in the FERGI release layout (per-frame AU features under
data/ and rankings in preparation/preprocessed_image_data/).

Before fitting on everyone, the model is evaluated leave-one-participant-out (LOPO):
fitted on all participants but one and tested on the one left out, in turn. The
per-participant and pooled accuracies are printed.

Models:
  aucomb   AUcomb valence score from AU4 and AU12 (paper eqs. 3-6) with an abstention
           threshold; grid-searched to maximise n_correct - 2 n_incorrect (eq. 9).
  faunet   FAU-Net, a small network over all 12 AU activation values (RankNet loss).

Examples:
  fergi fit --data ../fergi-public --model aucomb --out aucomb.json
  fergi fit --data study-export/ --model faunet --out faunet-model/
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fit",
        help="fit a preference model on labelled reactions (prints LOPO accuracy)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="folder in the release layout (data/ and preparation/)")
    parser.add_argument("--model", choices=("aucomb", "faunet"), default="aucomb",
                        help="model to fit (default: %(default)s)")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="model file to write (.json), or a folder (receives model.json)")
    parser.add_argument(
        "--screen", choices=("auto", "on", "off"), default="auto",
        help="leave out participants whose AU4 is unreliable at rest (paper Sec. 6.2.1); "
             "auto: on for aucomb, off for faunet (as published)",
    )
    parser.add_argument("--no-lopo", action="store_true", help="skip the LOPO evaluation")
    parser.add_argument("--skip-single", action="store_true",
                        help="leave out participants with fewer than two valid images (they form "
                             "no pair) instead of stopping with an error")
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fergi import FergiError
    from fergi.preference import AUcombValence, FAUNet, lopo_evaluate, save_model
    from fergi.preference._data import load_table

    out = Path(args.out)
    if out.exists() and not out.is_dir() and out.suffix.lower() != ".json":
        # Checked before the (long) fit, not after it.
        raise FergiError(f"--out {out}: exists and is not a folder or a .json file")
    screen = args.screen == "on" or (args.screen == "auto" and args.model == "aucomb")
    table, excluded = load_table(args.data, screen=screen, need_rankings=True, skip_single=args.skip_single)
    if excluded:
        print(f"Screened out (unreliable AU4 at rest): {', '.join(excluded)}")
        table = table[~table["participant"].isin(excluded)]
    table = table[table["rank_score"].notna()].reset_index(drop=True)
    model = AUcombValence() if args.model == "aucomb" else FAUNet()
    metadata = {"data": str(args.data), "excluded_participants": excluded,
                "n_participants": int(table["participant"].nunique())}
    n_participants = table["participant"].nunique()
    if not args.no_lopo:
        print(f"Leave-one-participant-out evaluation: {n_participants} folds ...", file=sys.stderr, flush=True)
        result = lopo_evaluate(model, table)
        per = result.per_participant
        print(per.to_string(index=False))
        print(result.summary())
        metadata["lopo"] = result.pooled
    model.fit(table)
    metadata["n_training_pairs"] = model.n_pairs_
    path = save_model(model, args.out, metadata=metadata)
    if args.model == "aucomb":
        print(f"Fitted on all {model.n_pairs_} pairs: k={model.k_:g}, w_AU4={model.w_au4_:g}, "
              f"threshold={model.threshold_:g}")
    else:
        print(f"Fitted on all {model.n_pairs_} pairs")
    print(f"Wrote {path}")
    return 0
