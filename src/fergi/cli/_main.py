"""Entry point of the ``fergi`` command.

Each subcommand lives in its own module ``fergi.cli.<name>`` that defines
``add_parser(subparsers)`` (cheap: no heavy imports) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fergi import FergiError, __version__

# Order is the order shown by ``fergi --help``: the pipeline from study to labels.
SUBCOMMANDS = ("serve", "worker", "export", "extract", "import-features", "score", "train-au", "reproduce",
               "fit", "annotate", "export-labels")

DESCRIPTION = """\
fergi turns people's spontaneous facial reactions to generated images into
preference labels (the FERGI method: Feng, Ma and de Sa).

Typical use:
  fergi reproduce                      recompute the paper's findings from the public release
  fergi extract videos/ --out feats/   per-frame AU features from face videos
  fergi import-features of/ --from openface --out feats/
                                       the same from OpenFace, py-feat or LibreFace outputs
  fergi score study/                   baseline scores (CLIP ... HPS v2) of every image
  fergi annotate --data study/         pairwise preference labels from reactions
  fergi export-labels study/ --out labels/ --format pickapic
                                       labels as a training dataset (DPO, reward models)
  fergi train-au --disfa DISFA/ --out fergi_ir50.pth   train the paper's AU model
  fergi serve                          run the web study that records reactions
  fergi worker --db postgresql+psycopg://...   process its sessions on other machines
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fergi",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fergi {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"fergi.cli.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fergi.cli.{name.replace('-', '_')}":
                raise
            continue
        sub_parser = module.add_parser(sub)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``fergi`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Warnings by default (a skipped clip, an ignored file); -v info, -vv debug.
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except FergiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
