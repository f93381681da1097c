"""Benchmark: frames per second of ``fergi extract`` with the geometry estimator.

Makes a 640x480, 30 fps face clip (the astronaut photograph, 5 s neutral then 5 s
smiling; VP9 webm like the study's recordings), then extracts it with 1 and 2
worker processes and prints the frame rate and the per-stage split in milliseconds
per frame: decode (PyAV + 30 fps standardisation + RGB), detection (BlazeFace short
range), landmarks (FaceMesh), AU (geometry estimator and pose ratios). Detection and
landmarks run in one MediaPipe graph call; their split comes from a separate
detection-only pass over the same frames. Reference points on a CPU: OpenFace 2.0 about 30 fps, py-feat 9-13 fps;
fergi's target is at least 60 fps per worker.

Usage::

    python benchmarks/bench_extract.py [--seconds 10] [--videos 4] [--codec webm] [--quick]

``--quick`` (what the test suite runs): two 2 s clips, the same 1- and 2-worker runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

QUICK_SECONDS, QUICK_VIDEOS = 2.0, 2


def _make_clips(folder: Path, seconds: float, n_videos: int, codec: str) -> list[Path]:
    from skimage import data

    from fergi.face import write_reaction_video

    first = write_reaction_video(
        folder / f"clip_0.{codec}",
        data.astronaut(),
        neutral_s=seconds / 2,
        expression_s=seconds / 2,
        smile=0.8,
    )
    clips = [first]
    for i in range(1, n_videos):
        clips.append(Path(shutil.copy(first, folder / f"clip_{i}.{codec}")))
    return clips


def _run(clips: list[Path], out: Path, workers: int) -> dict:
    from fergi.batch import ExtractionJob, LocalExecutor

    jobs = [
        ExtractionJob(
            video=str(c), output=str(out / f"{c.stem}_features.csv"), fps=30.0, decimals=2
        )
        for c in clips
    ]
    records: list[dict] = []
    t = time.perf_counter()
    LocalExecutor(workers).run_extraction(jobs, "geometry", None, records.append)
    wall = time.perf_counter() - t
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"benchmark extraction failed: {failed[0]['error']}")
    frames = sum(r["frames"] for r in records)
    busy = sum(r["seconds"] for r in records)
    cpu = sum(r["cpu_seconds"] for r in records)
    stages = {k: sum(r["timings"][k] for r in records) for k in records[0]["timings"]}
    return {
        "workers": workers,
        "frames": frames,
        "wall": wall,
        "busy": busy,
        "cpu": cpu,
        "stages": stages,
    }


def _detection_only_ms(clip: Path) -> float:
    """Milliseconds per frame of BlazeFace short range alone on the clip's frames."""
    from mediapipe.python.solutions import face_detection

    from fergi.video import read_video

    frames = read_video(clip, end=3.0).frames
    from fergi.face._landmarks import _quiet_stderr

    with _quiet_stderr():
        detector = face_detection.FaceDetection(model_selection=0)
        detector.process(frames[0])
    with detector:
        for f in frames[:5]:
            detector.process(f)
        t = time.perf_counter()
        for f in frames:
            detector.process(f)
        return 1000 * (time.perf_counter() - t) / len(frames)


def main(argv=None) -> dict:
    """Print the figures; return them as ``{"detect_ms": ..., "runs": [one dict per run]}``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10 s)")
    parser.add_argument("--videos", type=int, default=4, help="clips per run (default 4)")
    parser.add_argument("--codec", choices=("webm", "mp4"), default="webm")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SECONDS:g} s clips, {QUICK_VIDEOS} per run (for tests)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.videos = QUICK_SECONDS, QUICK_VIDEOS

    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = _make_clips(folder, args.seconds, args.videos, args.codec)
        print(
            f"clip: 640x480, 30 fps, {args.seconds:g} s ({args.codec}); {args.videos} clips per run; "
            f"{os.cpu_count()} CPUs"
        )
        # Warm-up in this process (MediaPipe graph start, first-call allocations).
        _run(clips[:1], folder / "warmup", 1)
        detection_ms = _detection_only_ms(clips[0])
        header = (
            f"{'workers':>7} {'frames':>6} {'wall s':>7} {'fps':>6} {'fps/worker':>10} {'fps/CPU-s':>9} | "
            f"ms/frame: {'decode':>6} {'detect':>6} {'mesh':>6} {'AU':>6} {'other':>6}"
        )
        print(header)
        print("-" * len(header))
        runs = []
        for workers in args.workers:
            r = _run(clips, folder / f"out_{workers}", workers)
            n = r["frames"]
            per_frame = {k: 1000 * v / n for k, v in r["stages"].items()}
            other = 1000 * r["busy"] / n - sum(per_frame.values())
            fps = n / r["wall"]
            # Per worker: frames over the time the workers were busy with videos.
            fps_worker = n / r["busy"]
            runs.append(
                {
                    "workers": workers,
                    "frames": n,
                    "wall_s": r["wall"],
                    "fps": fps,
                    "fps_per_worker": fps_worker,
                    "fps_per_cpu_s": n / r["cpu"],
                    "ms_per_frame": {**per_frame, "other": other},
                }
            )
            print(
                f"{workers:>7} {n:>6} {r['wall']:>7.2f} {fps:>6.1f} {fps_worker:>10.1f} "
                f"{n / r['cpu']:>9.1f} | "
                f"          {per_frame['decode']:>6.2f} {min(detection_ms, per_frame['face']):>6.2f} "
                f"{max(per_frame['face'] - detection_ms, 0.0):>6.2f} {per_frame['au']:>6.2f} "
                f"{other:>6.2f}"
            )
        print(
            "fps: all frames over wall time (incl. worker start-up); fps/worker: frames over "
            "the summed per-video processing time; fps/CPU-s: frames per second of CPU time "
            "used by the workers (what one free core would give); detect: BlazeFace alone, measured in this "
            "process; mesh: the face graph's time minus detect; other: writing, bookkeeping."
        )
    return {"detect_ms": detection_ms, "runs": runs}


if __name__ == "__main__":
    main()
