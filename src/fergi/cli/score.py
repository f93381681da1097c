"""``fergi score``: the six baseline preference scores of every image in a study export."""

from __future__ import annotations

import argparse

from fergi import FergiError

DESCRIPTION = """\
Compute the pre-trained preference scores the FERGI paper compares reactions with
(Tables 1-2) and integrates with them (eq. 10): CLIP score, LAION Aesthetic, BLIP
score, ImageReward, PickScore and HPS v2 (v2.0, the paper's), each reproducing its
reference implementation's number. HPS v2.1 is the separate scorer hpsv2.1 with its
own column HPS_V2.1_score (--scorers hpsv2.1); it never replaces v2.0.

Input: a folder written by `fergi export` (images/<participant>/session_<s>/
image_<i>.png, prompts in study/prompts.csv). The scores go into the release's
columns of preparation/preprocessed_image_data/<participant>.csv (CLIP_score,
Aesthetic_score, BLIP_score, ImageReward_score, PickScore, HPS_V2_score), rewritten
atomically with every other column kept. Then `fergi reproduce --data DATA` computes
Tables 1 and 2 and `fergi annotate --integrate` writes integrated labels.

Any folder of images works with --prompts TABLE.csv (columns image, a path relative to
DATA, and prompt): the table is written to --out with the score columns added.

Weights are never downloaded: each scorer looks in the Hugging Face cache, then in
$FERGI_SCORERS_DIR (default ~/.cache/fergi/scorers), unless --weights NAME=PATH says
where they are (a checkpoint file or a transformers folder). The error of a missing
scorer names the file and how to get it. Needs `pip install 'fergi[scorers]'`.

Models run in fp32 on every device, as ImageReward, BLIP score and PickScore do;
--precision fp16 halves GPU memory and time at the cost of small differences
(PickScore's x100 scale makes them visible).

Scores are cached by (scorer, weights hash, precision, image hash, prompt) in
$FERGI_SCORERS_DIR/scores.sqlite: a re-run scores only new images.

--executor ray runs each scorer in Ray actors, one per GPU of the cluster (or
--ray-actors), the images split across them in the batches a local run makes: the
same scores. The actors read the images and weights by path (shared storage). Needs
`pip install 'fergi[ray]'`.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score",
        help="baseline preference scores (CLIP, Aesthetic, ImageReward, PickScore, HPS v2...)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="DATA", help="folder written by `fergi export` (or of images, "
                        "with --prompts)")
    parser.add_argument("--scorers", default=None, metavar="LIST",
                        help="comma-separated scorers (default: the release's six, clip,aesthetic,blip,"
                             "imagereward,pickscore,hpsv2; also hpsv2.1)")
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                        help="weights of one scorer (repeatable); the aesthetic head's CLIP "
                             "backbone is clip's weights")
    parser.add_argument("--prompts", metavar="CSV", help="table with image and prompt columns, for "
                        "a folder that is not a fergi export")
    parser.add_argument("--out", metavar="CSV", help="with --prompts: output table (default "
                        "DATA/scores.csv)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when "
                        "available)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="model dtype (default fp32 on every device, as the references)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward "
                        "pass (default 16)")
    parser.add_argument("--cache", metavar="FILE", help="score cache file (default "
                        "$FERGI_SCORERS_DIR/scores.sqlite)")
    parser.add_argument("--no-cache", action="store_true", help="score every image again")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="run the models here (default) or in Ray actors")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="Ray cluster: 'auto' or ray://HOST:PORT (default: start a local Ray)")
    parser.add_argument("--ray-gpus-per-actor", type=float, default=None, metavar="G",
                        help="GPUs of each scorer actor (default 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--ray-actors", type=int, default=None, metavar="N",
                        help="actors per scorer (default one per GPU, or 1 without GPUs)")
    return parser


def parse_weights(items: list[str]) -> dict[str, dict]:
    """``["clip=/p/ViT-L-14.pt", ...]`` as ``create_scorer`` options per scorer."""
    # deferred: numpy and PIL (fergi.scorers); `fergi --help` loads none of it
    from fergi.scorers import get_scorer_spec

    options: dict[str, dict] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise FergiError(f"--weights {item!r}: expected NAME=PATH")
        get_scorer_spec(name.strip())
        options[name.strip()] = {"weights": path.strip()}
    if "clip" in options:
        options.setdefault("aesthetic", {})["backbone"] = options["clip"]["weights"]
    return options


def _executor(args: argparse.Namespace):
    if args.executor == "local":
        for flag in ("ray_address", "ray_gpus_per_actor", "ray_actors"):
            if getattr(args, flag) is not None:
                raise FergiError(f"--{flag.replace('_', '-')} is only used with --executor ray")
        return None
    # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
    from fergi.batch import RayExecutor

    return RayExecutor(args.ray_address, gpus_per_actor=args.ray_gpus_per_actor, actors=args.ray_actors)


def run(args: argparse.Namespace) -> int:
    import sys

    # deferred: pandas, pyarrow, numpy and PIL (the library); `fergi --help` loads none of it
    from fergi.batch import score_folder
    from fergi.scorers import list_scorers  # deferred: numpy and PIL

    names = ([n.strip() for n in args.scorers.split(",") if n.strip()] if args.scorers
             else list_scorers(release=True))
    summary = score_folder(
        args.data, names, prompts=args.prompts, out=args.out, weights=parse_weights(args.weights),
        device=args.device, batch_size=args.batch_size, precision=args.precision,
        cache=False if args.no_cache else (args.cache or True), progress=sys.stderr.isatty(),
        executor=_executor(args),
    )
    done = ", ".join(f"{n} {summary['scored'][n]} scored + {summary['cached'][n]} cached" for n in names)
    missing = f"; {summary['missing']} rows without an image file left blank" if summary["missing"] else ""
    print(f"{summary['images']} images: {done}{missing}; wrote {len(summary['tables'])} tables")
    return 0
