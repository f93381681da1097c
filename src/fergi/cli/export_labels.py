"""``fergi export-labels``: preference labels as a training dataset (Pick-a-Pic, HPD v2, HF)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Export a study's pairwise preference labels for reward-model and DPO training.

DATA is a study in the release layout with its generated images: a folder written by
`fergi export` (data/, preparation/, study/, images/<participant>/session_<s>/image_<i>.png).

Label sources (--source), each named in every row's label_source:
  reactions   the facial-reaction labels of `fergi annotate`: pairs above the model's
              abstention threshold (every pair with --all-pairs); confidence = |score difference|
  integrated  reactions + the ImageReward/PickScore/HPS v2 ensemble (paper eq. 10),
              for pairs whose images have those scores
  ranking     the participant's own ranking of the images (the study's ground truth)
  all         the three; with more than one source, each is its own split
              (train_reactions, train_integrated, train_ranking), never mixed rows

Formats (--format):
  pickapic    OUT/data/train-XXXXX-of-YYYYY.parquet in the columns of Pick-a-Pic v2
              (caption, jpg_0, jpg_1, label_0, label_1, ...): the Diffusion-DPO training
              script of diffusers reads it unchanged (--dataset_name OUT
              --dataset_split_name train)
  hpdv2       OUT/train.json as HPD v2's training split ({prompt, file_path,
              human_preference}, file_path relative to OUT/train/, where the images are):
              HPSv2's trainer reads it with --train-data OUT/train.json
              --train-folder OUT/train --dataset-type HPD
  hf          a datasets.DatasetDict with Image features: datasets.load_from_disk(OUT)
  jsonl       OUT/labels.jsonl, the format of `fergi annotate`
Every export has a dataset card OUT/README.md (how labels were made, the abstention
rule, the agreement with the rankings, consent) and OUT/export_info.json.

Privacy: participant IDs become a salted hash (the salt is created once in
DATA/.fergi_salt and never exported); no face video or AU trace leaves the study
(each image's 12 AU activation values only with --with-features); participants listed
in DATA/withdrawn.json, marked in the withdrawn column of DATA/study/sessions.csv, or
given with --exclude-participants are left out.

Honest accuracy: --lopo labels each participant with the model refitted without them,
so the card's agreement with the rankings is what to expect on new people.

Example (Diffusion-DPO):
  fergi export-labels my-study --out my-labels --format pickapic --lopo
"""


def _participants(text: str) -> list[str]:
    from pathlib import Path

    path = Path(text)
    if path.is_file():
        text = path.read_text()
    return [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export-labels",
        help="preference labels as a training dataset (Pick-a-Pic parquet, HPD v2, HF, JSON lines)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="DATA", help="study folder (fergi export output, with images/)")
    parser.add_argument("--out", required=True, metavar="OUT", help="output folder (new or empty)")
    parser.add_argument("--format", required=True, choices=("pickapic", "hpdv2", "hf", "jsonl"),
                        help="output layout")
    parser.add_argument("--source", default="reactions", metavar="SOURCE",
                        help="reactions (default), integrated, ranking, a comma-separated list, or all")
    parser.add_argument("--model", metavar="FILE",
                        help="model file from `fergi fit`, or `paper` for the paper's AUcomb on "
                             "raw IR-50 values (default: the shipped scale-free model)")
    parser.add_argument("--lopo", action="store_true",
                        help="label each participant with the model refitted without them "
                             "(needs rankings; the card's accuracy is then honest)")
    parser.add_argument("--screen", action="store_true",
                        help="leave participants with unreliable AU4 at rest out of the reaction "
                             "labels (as `fergi reproduce`)")
    parser.add_argument("--all-pairs", action="store_true",
                        help="label every pair by its score difference, also below the abstention "
                             "threshold")
    parser.add_argument("--abstentions", choices=("drop", "tie"), default="drop",
                        help="pairs below the threshold and exact ties: leave out (default) or "
                             "write as ties 0.5/0.5 (Pick-a-Pic convention; diffusers' DPO "
                             "example misreads them as 'jpg_0 preferred')")
    parser.add_argument("--min-confidence", type=float, metavar="X",
                        help="also leave out model labels whose |score difference| is below X")
    parser.add_argument("--exclude-participants", type=_participants, default=[], metavar="LIST",
                        help="participants who withdrew: comma-separated IDs or a file of them")
    parser.add_argument("--with-features", action="store_true",
                        help="also export each image's 12 AU activation values")
    parser.add_argument("--shard-size", type=int, default=10_000, metavar="N",
                        help="pairs per parquet shard (default 10000)")
    parser.add_argument("--images", metavar="DIR", help="images folder (default DATA/images)")
    parser.add_argument("--salt-file", metavar="FILE",
                        help="where the pseudonym salt is kept (default DATA/.fergi_salt)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    parser.add_argument("--skip-single", action="store_true",
                        help="leave out participants with fewer than two valid images")
    parser.add_argument("--max-seen-before", type=float, default=0.5, metavar="SECONDS",
                        help="leave out reactions to an image the participant had seen before for "
                             "longer than this (a replay after an interrupted presentation, from a "
                             "study export's study/clips.csv; default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
    from fergi.preference import (
        RAW_MODEL,
        default_model_path,
        export_labels,
        load_model,
        tie_warning,
    )

    model = None
    if args.model == "paper":
        model = load_model(default_model_path(RAW_MODEL))
    elif args.model:
        model = load_model(args.model)
    summary = export_labels(
        args.data, args.out, format=args.format, source=args.source, model=model,
        lopo=args.lopo, screen=args.screen, all_pairs=args.all_pairs,
        abstentions=args.abstentions, min_confidence=args.min_confidence,
        exclude_participants=args.exclude_participants, with_features=args.with_features,
        shard_size=args.shard_size, images_dir=args.images, salt_file=args.salt_file,
        overwrite=args.overwrite, skip_single=args.skip_single,
        max_seen_before_s=args.max_seen_before)
    counts = ", ".join(f"{n} {s}" for s, n in summary.per_source.items())
    print(f"wrote {summary.n_rows} labelled pairs ({counts}) to {summary.out} ({summary.format})")
    if len(summary.splits) > 1:
        print(f"  one split per source: {', '.join(summary.splits)}")
    for source in summary.per_source:
        pct = summary.agreement_percent(source)
        if pct is not None:
            entry = summary.agreement[source]
            print(f"  {source} labels agree with the rankings: {pct:.2f} % "
                  f"({entry['agree']} of {entry['n']}){' (LOPO)' if summary.plan.lopo else ''}")
    if tie_warning(summary):  # logged in full by the library
        print(f"warning: {summary.n_ties} rows are 0.5/0.5 ties, which diffusers' DPO example "
              f"trains on as \"jpg_0 preferred\": see {summary.out}/README.md, \"Ties\"")
    return 0
