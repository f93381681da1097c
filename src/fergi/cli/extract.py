"""``fergi extract``: per-frame face and AU features from face videos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fergi import FergiError

DESCRIPTION = """\
Compute, for every frame of face videos, the per-frame table of the FERGI release:
frame, timestamp, face_detection_confidence_score, pitch_indicative_ratio,
yaw_indicative_ratio and the intensities of AU1 AU2 AU4 AU5 AU6 AU9 AU12 AU15 AU17
AU20 AU25 AU26 (no face: 0 and -1). The files feed `fergi.features` and the rest of
fergi unchanged.

INPUT is any number of video files or folders (searched recursively for .mp4,
.webm, .mov, .avi, .mkv, .m4v, .y4m). Each video VIDEO.ext gets OUT/VIDEO_features.csv,
mirroring the folder structure under the input folder. When the inputs lie in
several folders, each one's outputs go under OUT/<that folder's name>/ so that
videos with the same name never share an output (folders with the same name get
a short hash of their full path: OUT/s1-3fa2c1/). Videos with the same name and a
different extension in one folder are written as VIDEO_ext_features.csv. A video
given twice is processed once. Videos are standardised to --fps frames per second
first (for each tick, the latest earlier frame), which handles the variable frame
rate of browser recordings.

Re-running skips videos whose output file exists (files are written atomically, so
an existing file is complete): an interrupted batch resumes where it stopped. A bad
video is reported and skipped; the exit status is 1 if any video failed. A report
(OUT/extract_report.csv) lists each video's frames, face-found share, time, error and
neutral reference; it is written even when the run is interrupted (Ctrl-C), and a
resumed run keeps the figures of the videos it skips.

The geometry estimator measures AUs against the person's neutral face: the first S
seconds of each video with --baseline-seconds S; else, for a study's clips, the
image's own baseline clip (reaction_clip_<i>.* is measured against the
baseline_clip_<i>.* beside it, and a baseline clip against itself, as the study does;
--no-pair-baselines turns this off); else the video's least-expressive stable frames
(not its median face, which is an expression when the person reacts for most of the
clip). The report's neutral_reference column says which was used (baseline_clip,
baseline_seconds, least_expressive, or absolute for ir50, which needs none).
With --estimator ir50 the faces are found and prepared by default exactly as the
FERGI authors' code does (--preprocessing authors: BlazeFace, their margin crop,
alignment on the 68 landmarks of their MobileFaceNet, histogram equalisation plus
linear mapping, padding to 112x112; the pose ratios from the same landmarks), so the
authors' published IR-50 weights see the input they were trained on. It needs their
landmark weights, mobilefacenet_model_best.pth.tar: --landmarks PATH, or the file in
$FERGI_MODELS_DIR (default ~/.cache/fergi/models). --preprocessing fergi keeps
fergi's own FaceMesh-based crop (geometry always uses FaceMesh).

OUT/features_meta.json records the estimator, its version, the checkpoint's SHA-256,
the preprocessing and the neutral reference, so that later stages know which AU scale
they read; a run with another estimator, checkpoint or preprocessing into the same
OUT is refused (use another --out, or --overwrite to recompute everything).

--executor ray runs one Ray task per video on a Ray cluster (--ray-address auto or
ray://HOST:PORT; without it a local Ray with --workers CPUs): geometry in the tasks,
ir50 in model actors (--ray-gpus-per-actor GPUs each, one per GPU) that batch the
faces of all videos in flight. The workers read the videos by path (shared storage);
the files, report and resume are the same as locally, byte for byte.

Examples:
  fergi extract recording.webm --out feats/
  fergi extract videos/ --out feats/ --workers 2
  fergi extract day1/ day2/ --out feats/        (feats/day1/..., feats/day2/...)
  fergi extract clips/ --out feats/ --estimator ir50 --checkpoint checkpoint_epoch3.pth \\
      --landmarks mobilefacenet_model_best.pth.tar
  fergi extract reaction.webm --baseline-seconds 5 --out feats/
  fergi extract videos/ --out feats/ --executor ray --ray-address auto
"""

def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "extract",
        help="per-frame AU features from face videos",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="video files or folders")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--estimator",
        default="geometry",
        choices=("geometry", "ir50"),
        help="AU estimator: 'geometry' (FaceMesh landmarks, offline, default) or 'ir50' "
        "(the paper's IResNet-50 appearance model, needs --checkpoint)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="weights of the ir50 estimator (a state_dict)",
    )
    parser.add_argument(
        "--landmarks",
        type=Path,
        metavar="PATH",
        help="MobileFaceNet 68-landmark weights of the authors' preprocessing (their "
        "mobilefacenet_model_best.pth.tar); default: $FERGI_MODELS_DIR or "
        "~/.cache/fergi/models (never downloaded)",
    )
    parser.add_argument(
        "--preprocessing",
        choices=("authors", "fergi"),
        default=None,
        help="face preprocessing of ir50: 'authors' (default: the FERGI authors' own "
        "pipeline, exactly, what their published IR-50 was trained on) or 'fergi' "
        "(FaceMesh-based, geometry's only one)",
    )
    parser.add_argument(
        "--baseline-seconds",
        type=_positive_seconds,
        default=None,
        metavar="S",
        help="use the first S seconds (S > 0) of each video as the person's neutral face "
        "(geometry estimator; default: not set, the neutral face is taken from the "
        "video's least-expressive stable frames)",
    )
    parser.add_argument(
        "--no-pair-baselines",
        action="store_true",
        help="do not measure reaction_clip_<i> against the baseline_clip_<i> beside it "
        "(geometry estimator; default: paired, as the study does)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=30.0,
        help="standardised frame rate (default 30, as in the study)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="parallel worker processes (default 1); with --executor ray and no "
        "--ray-address, the CPUs of the local Ray started",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where videos are extracted: 'local' processes (default) or 'ray', one "
        "task per video on a Ray cluster (pip install 'fergi[ray]')",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to use: 'auto' (the one `ray start` made on this machine) or "
        "ray://HOST:PORT; default: start a local Ray",
    )
    parser.add_argument(
        "--ray-gpus-per-actor",
        type=float,
        default=None,
        metavar="G",
        help="GPUs of each ir50 model actor (default 1 when the cluster has GPUs, else 0: "
        "CPU actors)",
    )
    parser.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        metavar="N",
        help="ir50 model actors (default one per GPU, or 1 without GPUs)",
    )
    parser.add_argument(
        "--format",
        choices=("csv", "parquet"),
        default="csv",
        help="output file format (default csv)",
    )
    parser.add_argument(
        "--decimals",
        type=int,
        default=None,
        choices=(2, 3),
        help="decimals of the values in CSV; default as the release: 2 for videos named "
        "baseline*, 3 for all others (the release's reaction clips)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute videos whose output exists (and replace OUT/features_meta.json)",
    )
    return parser


def _positive_seconds(text: str) -> float:
    """argparse type of ``--baseline-seconds``: a finite number of seconds above 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # 0 or less would silently fall back to the whole clip as the neutral face.
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _on_sigterm(signum, frame):
    # Turn `kill PID` into the Ctrl-C path: workers stopped, report written.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _executor(args: argparse.Namespace):
    # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
    from fergi.batch import LocalExecutor, RayExecutor

    if args.executor == "local":
        for flag in ("ray_address", "ray_gpus_per_actor", "ray_actors"):
            if getattr(args, flag) is not None:
                raise FergiError(f"--{flag.replace('_', '-')} is only used with --executor ray")
        return LocalExecutor(args.workers)
    if args.workers < 1:
        raise FergiError(f"--workers must be at least 1, got {args.workers}")
    return RayExecutor(
        args.ray_address,
        num_cpus=args.workers,
        gpus_per_actor=args.ray_gpus_per_actor,
        actors=args.ray_actors,
    )


def _run(args: argparse.Namespace) -> int:
    # deferred: pandas and pyarrow (the library); `fergi --help` loads none of it
    from fergi.batch import extract_videos

    result = extract_videos(
        args.inputs,
        args.out,
        estimator=args.estimator,
        checkpoint=args.checkpoint,
        fps=args.fps,
        baseline_seconds=args.baseline_seconds,
        pair_baselines=not args.no_pair_baselines,
        fmt=args.format,
        decimals=args.decimals,
        overwrite=args.overwrite,
        executor=_executor(args),
        preprocessing=args.preprocessing,
        landmarks=args.landmarks,
    )
    return _summarise(result.records, result.report, result.wall_s)


def _summarise(records: list[dict], report: Path, wall: float) -> int:
    done = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] == "failed"]
    skipped = [r for r in records if r["status"] == "skipped"]
    width = max([len(Path(r["video"]).name) for r in records] + [5])
    print(
        f"{'video':<{width}}  {'status':<7}  {'frames':>6}  {'face':>5}  {'time s':>6}  "
        f"{'neutral face':<16}  error"
    )
    for r in records:
        frames = r.get("frames")
        share = r.get("face_share")
        seconds = r.get("seconds")
        print(
            f"{Path(r['video']).name:<{width}}  {r['status']:<7}  "
            f"{'' if frames is None else frames:>6}  "
            f"{'' if share is None or share != share else f'{share:.0%}':>5}  "
            f"{'' if seconds is None else f'{seconds:.1f}':>6}  "
            f"{r.get('neutral_reference') or '':<16}  "
            f"{r.get('error', '') if r['status'] == 'failed' else ''}"
        )
    n_frames = sum(r.get("frames") or 0 for r in done)
    rate = f", {n_frames / wall:.0f} frames/s" if wall > 0 and n_frames else ""
    print(
        f"{len(done)} extracted, {len(skipped)} skipped (output exists), {len(failed)} failed"
        f"{rate}; report: {report}"
    )
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    return 1 if failed else 0
