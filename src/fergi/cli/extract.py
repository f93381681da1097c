"""``fergi extract``: per-frame face and AU features from face videos."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
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
OUT/features_meta.json records the estimator, its version, the checkpoint's SHA-256
and the neutral reference, so that later stages know which AU scale they read; a run
with another estimator or checkpoint into the same OUT is refused (use another --out,
or --overwrite to recompute everything).

Examples:
  fergi extract recording.webm --out feats/
  fergi extract videos/ --out feats/ --workers 2
  fergi extract day1/ day2/ --out feats/        (feats/day1/..., feats/day2/...)
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


_STUDY_CLIP = re.compile(r"^(baseline|reaction)_clip_(\d+)$")


def _baseline_partner(video: Path) -> Path | None:
    """The study baseline clip that is ``video``'s neutral face, if there is one.

    ``reaction_clip_<i>`` is paired with the ``baseline_clip_<i>`` video beside it (any
    video extension), and a baseline clip with itself, as the study's processing does.
    """
    from fergi.video import VIDEO_SUFFIXES

    match = _STUDY_CLIP.match(video.stem)
    if match is None:
        return None
    if match.group(1) == "baseline":
        return video
    for suffix in sorted(VIDEO_SUFFIXES):
        partner = video.with_name(f"baseline_clip_{match.group(2)}{suffix}")
        if partner.is_file():
            return partner
    return None


def _release_decimals(video) -> int:
    """The release writes baseline clips with 2 decimals and reaction clips with 3."""
    return 2 if Path(video).name.startswith("baseline") else 3


def _short_hash(path: Path, n: int = 6) -> str:
    import hashlib

    return hashlib.sha1(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:n]


def _output_paths(
    inputs: list[str], out: Path, fmt: str
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Map every video found in ``inputs`` to its own output file.

    The mapping depends only on the set of resolved videos and input folders, never
    on the order of the arguments, so a resumed run finds the same outputs:

    - one input folder (or files all in one folder): ``OUT/<relative path>/<stem>_features``;
    - several: ``OUT/<input folder name>/<relative path>/<stem>_features``, the folder
      name followed by a short hash of its full path when two inputs share a name;
    - videos that still collide (``x.mp4`` and ``x.webm``) get ``<stem>_<ext>_features``
      and, failing that, ``<stem>_<ext>_<hash of the video path>_features``.

    Returns ``(pairs, unmapped)``: (video, output) pairs, and (video, reason) for the
    videos that cannot get a unique output (so they are reported, never dropped).
    """
    from fergi.video import find_videos

    # (resolved video, shown video path, resolved root folder, relative folder)
    found: list[tuple[Path, Path, Path, Path]] = []
    for item in inputs:
        arg = Path(item)
        for video in find_videos([arg]):
            if arg.is_dir():
                root, rel = arg.resolve(), video.parent.relative_to(arg)
            else:
                root, rel = video.parent.resolve(), Path()
            found.append((video.resolve(), video, root, rel))

    roots = sorted({root for _, _, root, _ in found})
    if len(roots) <= 1:
        prefix = {root: Path() for root in roots}
    else:
        names: dict[str, list[Path]] = {}
        for root in roots:
            names.setdefault(root.name or "root", []).append(root)
        prefix = {}
        for name, same in names.items():
            for root in same:
                prefix[root] = Path(name if len(same) == 1 else f"{name}-{_short_hash(root)}")

    def target(resolved: Path, shown: Path, root: Path, rel: Path, level: int) -> Path:
        # The name the user sees (a symlink's own name), the hash of what it points to.
        stem, ext = shown.stem, shown.suffix.lstrip(".").lower()
        name = (stem, f"{stem}_{ext}", f"{stem}_{ext}_{_short_hash(resolved, 8)}")[level]
        return out / prefix[root] / rel / f"{name}_features.{fmt}"

    # The same video reached through several inputs: keep its first target in sort
    # order, whichever argument came first.
    chosen: dict[Path, tuple[Path, Path, Path]] = {}
    for resolved, shown, root, rel in found:
        candidate = (shown, root, rel)
        if resolved not in chosen or str(target(resolved, *candidate, 0)) < str(
            target(resolved, *chosen[resolved], 0)
        ):
            chosen[resolved] = candidate

    # Raise the naming level of every video in a collision (all of them, so the
    # result does not depend on which one was met first) until none is left.
    # Case-folded: x.mp4 and X.mp4 would share a file on macOS and Windows.
    level = dict.fromkeys(chosen, 0)
    unmapped: dict[Path, str] = {}
    while True:
        by_target: dict[str, list[Path]] = {}
        for resolved, where in chosen.items():
            if resolved not in unmapped:
                key = str(target(resolved, *where, level[resolved])).casefold()
                by_target.setdefault(key, []).append(resolved)
        clashes = [group for group in by_target.values() if len(group) > 1]
        if not clashes:
            break
        for group in clashes:
            for resolved in group:
                if level[resolved] < 2:
                    level[resolved] += 1
                else:
                    unmapped[resolved] = (
                        f"{chosen[resolved][0]}: cannot be given an output file of its own "
                        f"(same name as {len(group) - 1} other video(s)); rename it"
                    )

    pairs = sorted(
        (
            (where[0], target(resolved, *where, level[resolved]))
            for resolved, where in chosen.items()
            if resolved not in unmapped
        ),
        key=lambda pair: str(pair[1]),
    )
    failed = sorted(((chosen[r][0], reason) for r, reason in unmapped.items()), key=str)
    return pairs, failed


# Worker state: one face analyser and estimator per process, created once.
_WORKER: dict = {}


def _init_worker(estimator: str, checkpoint: str | None, in_pool: bool = False) -> None:
    import logging

    from fergi.au import create_au_estimator

    if in_pool:
        import signal

        # Ctrl-C reaches the whole process group: the parent alone decides to stop
        # the workers (it terminates them), so a worker must not die half-way alone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
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
            baseline=job.get("baseline"),
            progress=progress,
        )
        write_features(table, job["output"], decimals=job["decimals"])
        record.update(
            frames=len(table),
            face_share=table.attrs["face_share"],
            timings=table.attrs["timings"],
            neutral_reference=table.attrs["neutral_reference"],
            neutral_reference_detail=table.attrs["neutral_reference_detail"],
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


REPORT_COLUMNS = [
    "video",
    "output",
    "status",
    "frames",
    "face_share",
    "seconds",
    "error",
    "neutral_reference",
    "neutral_reference_detail",
]


def _write_report(records: list[dict], path: Path) -> None:
    import pandas as pd

    from fergi import FergiError

    table = pd.DataFrame(
        [{k: r.get(k) for k in REPORT_COLUMNS} for r in records], columns=REPORT_COLUMNS
    )
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        table.to_csv(tmp, index=False, float_format="%.3f")
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise FergiError(
            f"--out {path.parent}: cannot write the report {path.name} ({exc.strerror or exc})"
        ) from None


def _earlier_rows(path: Path) -> dict[Path, dict]:
    """Rows of a previous run's report with figures, by resolved output path."""
    import csv

    if not path.is_file():
        return {}
    rows: dict[Path, dict] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                output = row.get("output") or ""
                if not output or row.get("status") not in ("ok", "skipped"):
                    continue
                try:
                    figures = {
                        "frames": int(float(row["frames"])),
                        "face_share": float(row["face_share"]),
                        "seconds": float(row["seconds"]),
                    }
                except (KeyError, TypeError, ValueError):
                    continue  # a row without figures has nothing to carry over
                for key in ("neutral_reference", "neutral_reference_detail"):
                    if row.get(key):  # absent from reports of older fergi versions
                        figures[key] = row[key]
                rows[Path(output).resolve()] = figures
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        # An unreadable old report only loses the old figures, never the run.
        logging.getLogger(__name__).warning("%s: earlier report not read (%s)", path, exc)
        return {}
    return rows


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


def _run(args: argparse.Namespace) -> int:
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
    pairs, unmapped = _output_paths(args.inputs, args.out, args.format)
    if not pairs and not unmapped:
        raise FergiError(f"{', '.join(args.inputs)}: no video files found")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        what = "is a file, not a folder" if args.out.is_file() else "cannot be created"
        raise FergiError(f"--out {args.out}: {what} ({exc.strerror or exc})") from None
    report = args.out / REPORT_NAME
    provenance, earlier_neutral = _check_meta(args)
    earlier = _earlier_rows(report)

    records: list[dict] = [
        {"video": str(video), "output": "", "status": "failed", "error": reason}
        for video, reason in unmapped
    ]
    jobs = []
    for video, target in pairs:
        if target.exists() and not args.overwrite:
            records.append(
                {
                    "video": str(video),
                    "output": str(target),
                    "status": "skipped",
                    "error": "output exists",
                    **earlier.get(target.resolve(), {}),
                }
            )
            continue
        jobs.append(
            {
                "video": str(video),
                "output": str(target),
                "fps": args.fps,
                "baseline_seconds": args.baseline_seconds,
                # An explicit --baseline-seconds wins; ir50 needs no neutral face.
                "baseline": None
                if args.no_pair_baselines or args.baseline_seconds is not None
                or args.estimator != "geometry"
                else (str(p) if (p := _baseline_partner(Path(video))) else None),
                "decimals": args.decimals or _release_decimals(video),
            }
        )
    order = {str(target): i for i, (_, target) in enumerate(pairs)}

    def ordered() -> list[dict]:
        return sorted(records, key=lambda r: (order.get(r["output"], len(order)), r["video"]))

    # Written first too: an unwritable --out fails now, not after hours of work. The
    # meta goes first as well, so that an interrupted run's files are labelled.
    _write_report(ordered(), report)
    _write_meta(args.out, provenance, records, earlier_neutral)
    checkpoint = None if args.checkpoint is None else str(args.checkpoint)
    t0 = time.perf_counter()
    finished = False
    try:
        _run_jobs(jobs, args.estimator, checkpoint, args.workers, records)
        finished = True
    finally:
        # Also on Ctrl-C / SIGTERM: the report keeps the videos finished so far.
        try:
            _write_report(ordered(), report)
            _write_meta(args.out, provenance, records, earlier_neutral)
        except FergiError as exc:
            if finished:
                raise
            print(f"error: {exc}", file=sys.stderr)
    wall = time.perf_counter() - t0
    return _summarise(ordered(), report, wall)


def _check_meta(args: argparse.Namespace):
    """This run's provenance, after checking it against an earlier run's meta file.

    Returns ``(provenance, earlier neutral reference or None)``. Files of two AU scales
    in one folder would be read as one scale downstream, so a run whose estimator,
    version or weights differ from the folder's is refused unless ``--overwrite``
    recomputes everything.
    """
    from fergi import FergiError
    from fergi.au import features_provenance
    from fergi.datasets import META_NAME, read_features_meta

    if args.estimator == "ir50":
        neutral = "absolute"
    else:
        neutral = "baseline_seconds" if args.baseline_seconds is not None else "least_expressive"
    provenance = features_provenance(args.estimator, args.checkpoint, neutral_reference=neutral)
    path = args.out / META_NAME
    if not path.exists() or args.overwrite:
        return provenance, None
    earlier = read_features_meta(path)
    if earlier.scale != provenance.scale:
        raise FergiError(
            f"--out {args.out}: holds features of {earlier.describe()} ({META_NAME}), not "
            f"{provenance.describe()}; use another --out, or --overwrite to recompute them all"
        )
    return provenance, earlier.neutral_reference


def _write_meta(out: Path, provenance, records: list[dict], earlier_neutral) -> None:
    """Write ``OUT/features_meta.json`` with the neutral references actually used."""
    from dataclasses import replace

    from fergi.datasets import write_features_meta

    # Videos without any face have no AU values: their reference says nothing.
    used = {
        r.get("neutral_reference") or earlier_neutral
        for r in records
        if r["status"] in ("ok", "skipped") and (r.get("face_share") or 0) > 0
    }
    # Files of an earlier run stay in the folder even when this run did not list them.
    used.add(earlier_neutral)
    used.discard(None)
    if not used:  # nothing finished yet: label what this run is about to write
        neutral = provenance.neutral_reference
    else:
        neutral = used.pop() if len(used) == 1 else "mixed"
    write_features_meta(out, replace(provenance, neutral_reference=neutral))


def _progress_bar(**kwargs):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True, **kwargs)


def _stop_pool(pool) -> None:
    """Stop a ProcessPoolExecutor now: pending jobs cancelled, running workers killed."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _run_pool(fn, jobs: list, workers: int, on_result, initializer=None, initargs=()) -> None:
    """Run ``fn(job)`` in worker processes, calling ``on_result(job, result, error)``.

    Whatever stops the loop (Ctrl-C, SIGTERM turned into KeyboardInterrupt, an
    exception in ``on_result``), the workers are terminated before it propagates:
    no orphan keeps computing and the command does not wait for running videos.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: MediaPipe and torch hold threads that do not survive fork.
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=mp.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )
    try:
        futures = {pool.submit(fn, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                result, error = future.result(), None
            except Exception as exc:  # a crashed worker or a pickling error, per job
                result, error = None, exc
            on_result(futures[future], result, error)
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _run_jobs(
    jobs: list[dict], estimator: str, checkpoint: str | None, workers: int, records: list[dict]
) -> None:
    """Extract ``jobs``, appending each video's record to ``records`` as it finishes."""
    if not jobs:
        return
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
        return

    from concurrent.futures.process import BrokenProcessPool

    with (
        _progress_bar(total=len(jobs), unit="video", position=0) as videos,
        _progress_bar(unit="frame", position=1, leave=False, desc="frames done") as frames,
    ):

        def on_result(job: dict, record: dict | None, error: Exception | None) -> None:
            if error is not None:
                reason = (
                    f"worker process crashed ({error})"
                    if isinstance(error, BrokenProcessPool)
                    else f"{type(error).__name__}: {error}"
                )
                record = {
                    "video": job["video"],
                    "output": job["output"],
                    "status": "failed",
                    "error": f"{job['video']}: {reason}".splitlines()[0],
                }
            records.append(record)
            videos.update(1)
            # Frames arrive per finished video: workers cannot share a live counter cheaply.
            frames.update(record.get("frames") or 0)

        _run_pool(
            _process,
            jobs,
            workers,
            on_result,
            initializer=_init_worker,
            initargs=(estimator, checkpoint, True),
        )


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
