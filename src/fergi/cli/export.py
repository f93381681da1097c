"""``fergi export``: write a collected study in the public release's layout."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write the finished and processed sessions of a study run with `fergi serve` in the
layout of the public FERGI release, so `fergi reproduce`, `fergi fit` and
`fergi annotate` run on it unchanged:

  data/<participant>/session_<s>/{baseline,reaction}_clip_<i>_features.csv
  preparation/valid_sessions.json, invalid_images.json
  preparation/preprocessed_image_data/<participant>.csv   ratings, issues, emotions,
                                                           rank_score = n_images - position
  study/{sessions,prompts,images,answers,labels}.csv       prompts, seeds, free-text
                                                           answers, automatic labels
  images/<participant>/session_<s>/image_<i>.png           generated images
  raw/<participant>/session_<s>/*_clip_<i>.mp4             face videos, only for sessions
                                                           whose participant allowed sharing

Unfinished or unprocessed sessions are left out and listed in study/sessions.csv.

Example:
  fergi export --db fergi-study/study.sqlite3 --media fergi-study/media --out my-study
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="write a collected study in the public release's layout",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--db",
        default="fergi-study/study.sqlite3",
        help="study database: SQLAlchemy URL or SQLite file (default fergi-study/study.sqlite3)",
    )
    parser.add_argument("--media", default="fergi-study/media", help="media folder (default fergi-study/media)")
    parser.add_argument("--out", required=True, help="output folder (must be empty or new)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-raw", action="store_true", help="never copy face videos, even where sharing was allowed")
    return parser


def run(args) -> int:
    # deferred: fastapi, sqlalchemy and pyarrow (fergi.study); `fergi --help` loads none of it
    from fergi.study import export_study

    summary = export_study(args.db, args.media, args.out, overwrite=args.overwrite, include_raw=not args.no_raw)
    print(
        f"exported {summary['sessions']} session(s) of {summary['participants']} participant(s), "
        f"{summary['images']} images, {summary['raw_clips']} shared clip video(s) to {summary['out']}"
    )
    for key, reason in summary["skipped"].items():
        print(f"  skipped {key}: {reason}")
    return 0
