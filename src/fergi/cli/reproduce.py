"""``fergi reproduce``: recompute the paper's findings from a FERGI release."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Recompute the FERGI paper's results from a release of reaction features:
frame and clip filtering, AU activation values, participant screening, the
statistics of Sec. 6.1 (Figs. 3 and 4) and the preference tables of Sec. 6.2
(Tables 1 and 2, FAU-Net, accuracy vs coverage).

Without --data, the public release is looked up in $FERGI_DATA, then in the
user cache, and downloaded from GitHub when missing (about 100 MB).
--data names a folder that holds data/ (the release, or a study exported by
`fergi export`); it is never downloaded into.

Writes OUT/results.json and the figures (PNG and PDF), and prints the tables.
The release's Aesthetic_score and BLIP_score come from networks the authors' code
never gave their weights: both are flagged (results.json "score_columns", with the
evidence) and their rows in Tables 1 and 2 are marked as chance.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "reproduce",
        help="recompute the paper's statistics, tables and figures",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", metavar="PATH", help="release folder (holding data/ and preparation/)")
    parser.add_argument(
        "--out", metavar="DIR", default="fergi-results", help="output folder (default: %(default)s)"
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument(
        "--no-preference", action="store_true", help="skip Sec. 6.2 (Tables 1 and 2, FAU-Net)"
    )
    parser.add_argument("--no-download", action="store_true", help="never download the release")
    parser.add_argument("--max-seen-before", type=float, default=0.5, metavar="SECONDS",
                        help="leave out reactions to an image the participant had seen before for "
                             "longer than this (a replay after an interrupted presentation, from a "
                             "study export's study/clips.csv; default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
    from fergi._reproduce import format_score_columns, format_statistics, format_summary, reproduce

    result = reproduce(
        args.data,
        args.out,
        preference=not args.no_preference,
        figures=not args.no_figures,
        # An explicit --data is the user's data: a wrong path is an error, not a download.
        download=not args.no_download and args.data is None,
        max_seen_before_s=args.max_seen_before,
    )
    print(format_summary(result.results))
    untrained = format_score_columns(result.results)
    if untrained:
        print(untrained)
    print()
    print(format_statistics(result.results))
    if "preference_skipped" in result.results:
        print()
        print(f"Tables 1 and 2 skipped: {result.results['preference_skipped']}")
    elif not args.no_preference:
        # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
        from fergi.preference import format_paper_tables

        print()
        print(format_paper_tables(result.results))
    total = sum(result.timings.values())
    print()
    print(f"Wrote {args.out}/results.json" + (" and figures" if not args.no_figures else "") + f" in {total:.1f} s")
    return 0
