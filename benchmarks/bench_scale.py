"""Benchmark: scaling past one process — extraction on Ray, study processing on workers.

Extraction: the same face clips (the astronaut photograph, 640x480, 30 fps, half
neutral, half smiling) extracted with the geometry estimator by one local process,
then by a local Ray cluster with 1 and 2 worker CPUs (``fergi extract --executor
ray``). Each Ray cluster is started and warmed up (every worker has made its face
analyser, in an untimed pass over the clips) before the timed run; its start-up is
printed apart. Figures: frames per
second and the ratio to the single-process figure.

Study processing: session-processing throughput with 1 and 2 ``fergi worker``
processes, from ``benchmarks/_scale_study.py`` when it is present.

Usage::

    python benchmarks/bench_scale.py [--seconds 4] [--videos 4] [--workers 1 2] [--quick]

``--quick`` (what the test suite runs): two 1 s clips, the same runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

QUICK_SECONDS, QUICK_VIDEOS = 1.0, 2
HERE = Path(__file__).resolve().parent


def _make_clips(folder: Path, seconds: float, n_videos: int) -> list[Path]:
    import shutil

    from skimage import data

    from fergi.face import write_reaction_video

    first = write_reaction_video(
        folder / "clip_0.webm", data.astronaut(), neutral_s=seconds / 2,
        expression_s=seconds / 2, smile=0.8,
    )
    return [first] + [Path(shutil.copy(first, folder / f"clip_{i}.webm")) for i in range(1, n_videos)]


def _jobs(clips: list[Path], out: Path):
    from fergi.batch import ExtractionJob

    return [ExtractionJob(video=str(c), output=str(out / f"{c.stem}_features.csv"), fps=30.0)
            for c in clips]


def _timed_run(executor, clips: list[Path], out: Path) -> tuple[int, float]:
    """``(frames, wall seconds)`` of one extraction of ``clips``."""
    records: list[dict] = []
    t = time.perf_counter()
    executor.run_extraction(_jobs(clips, out), "geometry", None, records.append)
    wall = time.perf_counter() - t
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"benchmark extraction failed: {failed[0]['error']}")
    return sum(r["frames"] for r in records), wall


def extraction_figures(clips: list[Path], folder: Path, ray_workers: list[int]) -> dict:
    """Frames per second of one local process and of Ray with each worker count."""
    from fergi.batch import LocalExecutor, RayExecutor

    local = LocalExecutor(1)
    _timed_run(local, clips[:1], folder / "warmup")  # MediaPipe graph start-up
    frames, wall = _timed_run(local, clips, folder / "local")
    runs = [{"executor": "local", "workers": 1, "frames": frames, "wall_s": wall,
             "fps": frames / wall, "start_s": 0.0}]
    for n in ray_workers:
        executor = RayExecutor(num_cpus=n)
        t = time.perf_counter()
        with executor.session():
            # An untimed pass first: each worker process imports fergi and makes its
            # face analyser once, as it does once per cluster in real use.
            _timed_run(executor, clips, folder / f"warmup-ray{n}")
            start = time.perf_counter() - t
            frames, wall = _timed_run(executor, clips, folder / f"ray{n}")
        runs.append({"executor": "ray", "workers": n, "frames": frames, "wall_s": wall,
                     "fps": frames / wall, "start_s": start})
    for run in runs:
        run["ratio"] = run["fps"] / runs[0]["fps"]
    return {"runs": runs}


def _study_half(quick: bool):
    """``session_processing_figures(quick)`` of ``_scale_study.py``, or None without it."""
    path = HERE / "_scale_study.py"
    if not path.is_file():
        print("\nstudy processing: skipped (benchmarks/_scale_study.py is not there)")
        return None
    spec = importlib.util.spec_from_file_location("_scale_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print()
    # --- study processing with 1 and 2 `fergi worker` processes (_scale_study.py) ---
    return module.session_processing_figures(quick)


def main(argv=None) -> dict:
    """Print the figures; return ``{"extraction": {"runs": [...]}, "sessions": ... or None}``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length (default 4 s)")
    parser.add_argument("--videos", type=int, default=4, help="clips per run (default 4)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="Ray worker CPUs to measure (default 1 2)")
    parser.add_argument("--no-study", action="store_true", help="extraction figures only")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SECONDS:g} s clips, {QUICK_VIDEOS} per run (for tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.videos = QUICK_SECONDS, QUICK_VIDEOS

    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = _make_clips(folder, args.seconds, args.videos)
        print(f"extraction (geometry): {args.videos} clips of {args.seconds:g} s, 640x480, 30 fps; "
              f"{os.cpu_count()} CPUs")
        extraction = extraction_figures(clips, folder, args.workers)
    header = f"{'executor':<8} {'workers':>7} {'frames':>6} {'wall s':>7} {'fps':>7} {'x local':>7} {'start s':>7}"
    print(header)
    print("-" * len(header))
    for run in extraction["runs"]:
        print(f"{run['executor']:<8} {run['workers']:>7} {run['frames']:>6} {run['wall_s']:>7.2f} "
              f"{run['fps']:>7.1f} {run['ratio']:>7.2f} {run['start_s']:>7.1f}")
    print("x local: frames per second as a ratio to one local process; start s: Ray start-up "
          "and worker warm-up, not in the timed run")
    sessions = None if args.no_study else _study_half(args.quick)
    return {"extraction": extraction, "sessions": sessions}


if __name__ == "__main__":  # pragma: no cover
    main()
