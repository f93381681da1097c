"""``fergi train-au``: train the paper's IR-50 AU model on DISFA and DISFA+."""

from __future__ import annotations

import argparse
from pathlib import Path

from fergi import FergiError

DESCRIPTION = """\
Train the FERGI paper's AU model (IResNet-50 with a 64x6 regression + ordinal head,
Supp. B) on the DISFA and/or DISFA+ datasets as distributed, and write a model file
that `fergi extract --estimator ir50 --checkpoint MODEL` uses unchanged.

Steps: (1) read the datasets' label files; (2) preprocess every labelled frame once
into a cache in the run folder (frames without a face are counted and left out): by
default exactly as the FERGI authors did (--preprocessing authors: BlazeFace, margin
crop, alignment on their MobileFaceNet's 68 landmarks, --landmarks PATH or
$FERGI_MODELS_DIR/mobilefacenet_model_best.pth.tar, heNlm, padding, 112x112), which
is also what `fergi extract --estimator ir50` feeds by default, or fergi's own
FaceMesh-based crop (--preprocessing fergi); (3) optionally estimate the
accuracy by subject-independent cross-validation (--cv K): K models, each trained
on the other subjects and tested on its own, reported as per-AU ICC(3,1), Pearson r
and mean absolute error on the 0-5 scale; (4) train the final model on every subject
(--all, the default when --cv is not given) and write --out.

The defaults are the authors' recipe (their DISFAwithPlus_train_model.py): Adam,
learning rate 1e-4 for the last layer and 1e-5 for the rest, weight decay 5e-4,
batch 64, 3 epochs, seed 42, random flip and resized crop (area 0.90-1, aspect
19/20-20/19), fp32, and the MSE intensity weights as their code normalises them
(--mse-weights paper-eq16: as the paper's eq. 16 is printed, 2x and 4x larger).
Start from a face-recognition IResNet-50 (--backbone, e.g. Glint360K's r50 weights,
as the paper does); without it the network starts from random weights and learns
far less. The model file records how it was trained (options, precision).

Interrupted? Run the same command again: the cache and the training continue from
the last checkpoint (written every epoch). The run folder (default MODEL_run/ next
to --out) holds config.json, losses.csv, epoch_losses.csv, eval.csv/eval.json and
learning_curve.png.

Uses a GPU when there is one (fp32; --amp for mixed precision, faster but not the
authors' arithmetic). Several GPUs: build the cache
once, then start one process per GPU (rank 0 writes every file):
  fergi train-au --disfa DISFA --out model.pth --prepare-only --workers 8
  torchrun --nproc_per_node 4 -m fergi train-au --disfa DISFA --out model.pth

Examples:
  fergi train-au --disfa DISFA/ --disfa-plus DISFA+/ --out fergi_ir50.pth --backbone glint360k_r50.pth
  fergi train-au --disfa DISFA/ --disfa-plus DISFA+/ --out fergi_ir50.pth --cv 3 --all
  fergi train-au --disfa DISFA/ --cv 3                  (accuracy estimate only)
  (--out with --cv needs --all: the cross-validation alone writes no model)
"""


def _layers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: four comma-separated integers, e.g. 3,4,14,3"
        ) from None
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: four positive integers, e.g. 3,4,14,3")
    return values


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train-au",
        help="train the paper's IR-50 AU model on DISFA / DISFA+",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--disfa",
        type=Path,
        metavar="DIR",
        help="DISFA folder (Videos_LeftCamera, Video_RightCamera, ActionUnit_Labels)",
    )
    data.add_argument(
        "--disfa-plus", type=Path, metavar="DIR", help="DISFA+ folder (Images, Labels)"
    )
    data.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="preprocessing cache folder (default: RUN_DIR/cache)",
    )
    data.add_argument(
        "--workers",
        type=_positive(int),
        default=1,
        metavar="N",
        help="processes preprocessing frames (default 1)",
    )
    data.add_argument(
        "--preprocessing",
        choices=("authors", "fergi"),
        default="authors",
        help="face crop: 'authors' (default: the FERGI authors' pipeline, exactly) or "
        "'fergi' (FaceMesh-based); extract with the same --preprocessing",
    )
    data.add_argument(
        "--landmarks",
        type=Path,
        metavar="PATH",
        help="MobileFaceNet weights of the authors' preprocessing (their "
        "mobilefacenet_model_best.pth.tar; default: $FERGI_MODELS_DIR or ~/.cache/fergi/models)",
    )
    what = parser.add_argument_group("what to do")
    what.add_argument(
        "--out", type=Path, metavar="MODEL", help="model file to write (e.g. fergi_ir50.pth)"
    )
    what.add_argument(
        "--cv",
        type=int,
        metavar="K",
        help="subject-independent K-fold cross-validation; prints the evaluation table (3 is usual)",
    )
    what.add_argument(
        "--all",
        action="store_true",
        help="train the final model on every subject (the default without --cv)",
    )
    what.add_argument(
        "--run-dir", type=Path, metavar="DIR", help="run folder (default: MODEL_run next to --out)"
    )
    train = parser.add_argument_group("training (defaults: the paper's)")
    train.add_argument(
        "--backbone",
        type=Path,
        metavar="PATH",
        help="face-recognition IResNet-50 state_dict to start from (e.g. glint360k_r50.pth)",
    )
    train.add_argument("--epochs", type=_positive(int), default=3, help="epochs (default 3)")
    train.add_argument(
        "--batch-size", type=_positive(int), default=64, help="batch size per process (default 64)"
    )
    train.add_argument(
        "--lr-head",
        type=_positive(float),
        default=1e-4,
        help="learning rate of the last layer (default 1e-4)",
    )
    train.add_argument(
        "--lr-backbone",
        type=_positive(float),
        default=1e-5,
        help="learning rate of the other layers (default 1e-5)",
    )
    train.add_argument(
        "--weight-decay", type=float, default=5e-4, help="Adam weight decay (default 5e-4)"
    )
    train.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    train.add_argument(
        "--mse-weights",
        choices=("authors", "paper-eq16"),
        default="authors",
        help="normalisation of the MSE intensity weights: the authors' code (default, "
        "it made their model) or eq. 16 as printed (2x/4x the authors')",
    )
    train.add_argument("--no-flip", action="store_true", help="no random horizontal flip")
    train.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=(0.90, 1.0),
        metavar=("MIN", "MAX"),
        help="random resized crop: area share (default 0.90 1)",
    )
    train.add_argument(
        "--width",
        type=_positive(int),
        default=64,
        help="channels of the first stage (default 64 = IResNet-50; smaller for quick tries)",
    )
    train.add_argument(
        "--layers",
        type=_layers,
        default=(3, 4, 14, 3),
        metavar="A,B,C,D",
        help="blocks per stage (default 3,4,14,3 = IResNet-50)",
    )
    train.add_argument(
        "--max-steps",
        type=_positive(int),
        metavar="N",
        help="stop after N optimiser steps (quick tries)",
    )
    train.add_argument(
        "--save-every",
        type=int,
        default=0,
        metavar="N",
        help="also checkpoint every N steps (default: every epoch only)",
    )
    hw = parser.add_argument_group("hardware")
    hw.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when available)")
    hw.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision (bfloat16 autocast; float16 on older GPUs): faster, not the "
        "authors' recipe (default: fp32, as they trained)",
    )
    hw.add_argument(
        "--loader-workers",
        type=int,
        default=2,
        metavar="N",
        help="processes reading the cache during training (default 2)",
    )
    what.add_argument(
        "--prepare-only",
        action="store_true",
        help="only build the preprocessing cache (run once before a multi-GPU torchrun)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args) -> int:
    import logging

    # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
    from fergi.au.train import TrainConfig, train_au

    if args.disfa is None and args.disfa_plus is None:
        raise FergiError("--disfa/--disfa-plus: give at least one dataset folder")
    if args.cv is not None and args.cv < 2:
        raise FergiError(f"--cv {args.cv}: needs at least 2 folds")
    final = (args.all or args.cv is None) and not args.prepare_only
    if final and args.out is None:
        raise FergiError("--out: give the model file to write (or only --cv K to evaluate)")
    if args.out is None and args.run_dir is None:
        args.run_dir = Path("train_au_run")
    logging.getLogger("fergi").setLevel(min(logging.getLogger().level, logging.INFO))
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr_head=args.lr_head,
        lr_backbone=args.lr_backbone,
        weight_decay=args.weight_decay,
        seed=args.seed,
        flip=not args.no_flip,
        crop_scale=tuple(args.crop_scale),
        width=args.width,
        layers=tuple(args.layers),
        backbone=None if args.backbone is None else str(args.backbone),
        device=args.device,
        mse_weights=args.mse_weights,
        amp=args.amp,
        num_workers=args.loader_workers,
        max_steps=args.max_steps,
        save_every=args.save_every,
    )
    result = train_au(
        disfa=args.disfa,
        disfa_plus=args.disfa_plus,
        out=args.out,
        run_dir=args.run_dir,
        cache_dir=args.cache,
        cv=args.cv,
        final=final,
        config=config,
        workers=args.workers,
        progress=not args.no_progress,
        prepare_only=args.prepare_only,
        preprocessing=args.preprocessing,
        landmarks=args.landmarks,
    )
    c = result["cache"]
    print(
        f"frames: {c['frames']} labelled, {c['faces']} with a face, {c['no_face']} without, {c['not_in_video']} past the end of their video"
    )
    if result["table"] is not None:
        print(f"subject-independent {args.cv}-fold cross-validation:")
        print(result["table"])
    if result["model"] is not None:
        print(f"model: {result['model']}")
    print(f"run folder: {result['run_dir']}")
    return 0
