"""``fergi extract``: per-frame face and AU features from face videos."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DESCRIPTION = """\
Compute, for every frame of face videos, the per-frame table of the FERGI release:
frame, timestamp, face_detection_confidence_score, pitch_indicative_ratio,
yaw_indicative_ratio and the intensities of AU1 AU2 AU4 AU5 AU6 AU9 AU12 AU15 AU17
AU20 AU25 AU26 (no face: 0 and -1). The files feed `fergi.features` and the rest of
fergi unchanged.

INPUT is any number of video files or folders (searched recursively for .mp4,
.webm, .mov, .avi, .mkv, .m4v, .y4m). Each video VIDEO.ext gets OUT/VIDEO_features.csv
(mirroring the folder structure under each input folder). Videos are standardised
to --fps frames per second first (for each tick, the latest earlier frame), which
handles the variable frame rate of browser recordings.

Re-running skips videos whose output file exists (files are written atomically, so
an existing file is complete): an interrupted batch resumes where it stopped. A bad
video is reported and skipped; the exit status is 1 if any video failed. A report
(OUT/extract_report.csv) lists each video's frames, face-found share, time and error.

Examples:
  fergi extract recording.webm --out feats/
  fergi extract videos/ --out feats/ --workers 2
  fergi extract clips/ --out feats/ --estimator ir50 --checkpoint fergi_ir50.pth
  fergi extract reaction.webm --baseline-seconds 5 --out feats/
"""

REPORT_NAME = "extract_report.csv"


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
        "--baseline-seconds",
        type=float,
        metavar="S",
        help="use the first S seconds of each video as the person's neutral face "
        "(geometry estimator; default: the median face of the whole video)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=30.0,
        help="standardised frame rate (default 30, as in the study)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="parallel worker processes (default 1)"
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
        "--overwrite", action="store_true", help="recompute videos whose output exists"
    )
    return parser


def _release_decimals(video) -> int:
    """The release writes baseline clips with 2 decimals and reaction clips with 3."""
    return 2 if Path(video).name.startswith("baseline") else 3


def _output_paths(inputs: list[str], out: Path, fmt: str) -> list[tuple[Path, Path]]:
    """(video, output file) pairs; folder inputs keep their relative layout."""
    from fergi.video import find_videos

    pairs: list[tuple[Path, Path]] = []
    used: set[Path] = set()
    for item in inputs:
        root = Path(item)
        for video in find_videos([root]):
            rel = video.relative_to(root).parent if root.is_dir() else Path()
            target = out / rel / f"{video.stem}_features.{fmt}"
            if target in used:  # x.mp4 and x.webm side by side
                target = out / rel / f"{video.stem}_{video.suffix.lstrip('.')}_features.{fmt}"
            if target in used:
                continue  # the same video given twice
            used.add(target)
            pairs.append((video, target))
    return pairs


# Worker state: one face analyser and estimator per process, created once.
_WORKER: dict = {}


def _init_worker(estimator: str, checkpoint: str | None) -> None:
    import logging

    from fergi.au import create_au_estimator

    logging.getLogger("absl").setLevel(logging.ERROR)
    options = {} if checkpoint is None else {"checkpoint": checkpoint}
    _WORKER["estimator"] = create_au_estimator(estimator, **options)


def _process(job: dict, progress=None) -> dict:
    """Extract one video; never raises (errors go into the returned record)."""
    from fergi import FergiError
    from fergi.au import extract_features, write_features

    t = time.perf_counter()
    cpu = time.process_time()
    record = {
        "video": job["video"],
        "output": job["output"],
        "status": "ok",
        "frames": 0,
        "face_share": float("nan"),
        "seconds": 0.0,
        "error": "",
    }
    try:
        table = extract_features(
            job["video"],
            estimator=_WORKER["estimator"],
            fps=job["fps"],
            baseline_seconds=job["baseline_seconds"],
            progress=progress,
        )
        write_features(table, job["output"], decimals=job["decimals"])
        record.update(
            frames=len(table), face_share=table.attrs["face_share"], timings=table.attrs["timings"]
        )
    except FergiError as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # one bad video never stops the batch
        record.update(
            status="failed", error=f"{job['video']}: {type(exc).__name__}: {exc}".splitlines()[0]
        )
    record["seconds"] = time.perf_counter() - t
    record["cpu_seconds"] = time.process_time() - cpu
    return record


def _write_report(records: list[dict], path: Path) -> None:
    import pandas as pd

    columns = ["video", "output", "status", "frames", "face_share", "seconds", "error"]
    table = pd.DataFrame([{k: r.get(k) for k in columns} for r in records], columns=columns)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False, float_format="%.3f")
    tmp.replace(path)


def run(args: argparse.Namespace) -> int:
    from fergi import FergiError

    if args.workers < 1:
        raise FergiError(f"--workers must be at least 1, got {args.workers}")
    if args.fps <= 0:
        raise FergiError(f"--fps must be positive, got {args.fps}")
    if args.checkpoint is not None and args.estimator != "ir50":
        raise FergiError("--checkpoint is only used with --estimator ir50")
    if args.estimator == "ir50" and args.checkpoint is None:
        raise FergiError(
            "--estimator ir50 needs --checkpoint PATH (IR-50 weights; none can be downloaded)"
        )
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FergiError(f"{args.checkpoint}: checkpoint file not found")
    pairs = _output_paths(args.inputs, args.out, args.format)
    if not pairs:
        raise FergiError(f"{', '.join(args.inputs)}: no video files found")
    args.out.mkdir(parents=True, exist_ok=True)

    records: list[dict] = []
    jobs = []
    for video, target in pairs:
        if target.exists() and not args.overwrite:
            records.append(
                {
                    "video": str(video),
                    "output": str(target),
                    "status": "skipped",
                    "error": "output exists",
                }
            )
            continue
        jobs.append(
            {
                "video": str(video),
                "output": str(target),
                "fps": args.fps,
                "baseline_seconds": args.baseline_seconds,
                "decimals": args.decimals or _release_decimals(video),
            }
        )
    checkpoint = None if args.checkpoint is None else str(args.checkpoint)
    t0 = time.perf_counter()
    records += _run_jobs(jobs, args.estimator, checkpoint, args.workers)
    wall = time.perf_counter() - t0
    report = args.out / REPORT_NAME
    _write_report(records, report)
    return _summarise(records, report, wall)


def _progress_bar(**kwargs):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True, **kwargs)


def _run_jobs(jobs: list[dict], estimator: str, checkpoint: str | None, workers: int) -> list[dict]:
    if not jobs:
        return []
    records = []
    if workers == 1 or len(jobs) == 1:
        _init_worker(estimator, checkpoint)
        with (
            _progress_bar(total=len(jobs), unit="video", position=0) as videos,
            _progress_bar(unit="frame", position=1, leave=False) as frames,
        ):
            for job in jobs:
                frames.set_description(Path(job["video"]).name[:30])
                records.append(_process(job, progress=frames.update))
                videos.update(1)
        return records

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn: MediaPipe and torch hold threads that do not survive fork.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(estimator, checkpoint),
    ) as pool:
        futures = {pool.submit(_process, job): job for job in jobs}
        with _progress_bar(total=len(jobs), unit="video") as bar:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    records.append(future.result())
                except BrokenProcessPool as exc:
                    records.append(
                        {
                            "video": job["video"],
                            "output": job["output"],
                            "status": "failed",
                            "error": f"{job['video']}: worker process crashed ({exc})",
                        }
                    )
                except Exception as exc:  # pickling or pool errors, still per video
                    records.append(
                        {
                            "video": job["video"],
                            "output": job["output"],
                            "status": "failed",
                            "error": f"{job['video']}: {type(exc).__name__}: {exc}",
                        }
                    )
                bar.update(1)
    order = {job["video"]: i for i, job in enumerate(jobs)}
    return sorted(records, key=lambda r: order[r["video"]])


def _summarise(records: list[dict], report: Path, wall: float) -> int:
    done = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] == "failed"]
    skipped = [r for r in records if r["status"] == "skipped"]
    width = max([len(Path(r["video"]).name) for r in records] + [5])
    print(f"{'video':<{width}}  {'status':<7}  {'frames':>6}  {'face':>5}  {'time s':>6}  error")
    for r in records:
        frames = r.get("frames")
        share = r.get("face_share")
        seconds = r.get("seconds")
        print(
            f"{Path(r['video']).name:<{width}}  {r['status']:<7}  "
            f"{'' if frames is None else frames:>6}  "
            f"{'' if share is None or share != share else f'{share:.0%}':>5}  "
            f"{'' if seconds is None else f'{seconds:.1f}':>6}  {r.get('error', '') if r['status'] == 'failed' else ''}"
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
