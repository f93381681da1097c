"""Session-processing throughput of the study with 1 and 2 ``fergi worker`` processes.

Used by ``benchmarks/bench_scale.py`` (not a benchmark on its own). A throwaway
PostgreSQL (``tests/helpers/services.py``), one ``fergi serve --no-worker`` and the workers run
as separate OS processes on 127.0.0.1 with a shared local media folder. For each
worker count a batch of simulated sessions (real WebM recordings over HTTP) is
finished first, with nothing processing; then the workers start and take every job
(images, real-time clips, labels). Throughput is measured from the jobs table's own
timestamps: sessions / (last job finished - first job started), so process start-up
is not counted, and reported as ratios to the one-worker figure.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """``tests.helpers.<name>`` (the test suite's throwaway services), from the checkout."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"tests.helpers.{name}")


def _run_batch(study, cluster, recording: bytes, n_workers: int, n_sessions: int, first_pid: int) -> dict:
    import httpx
    from sqlalchemy import create_engine, text

    from fergi.study._db import make_sessionmaker
    from fergi.study._queue import QueueDispatcher

    with httpx.Client(base_url=study.base_url, timeout=120) as client:
        people = [cluster.HttpParticipant(client, f"{first_pid + i:03d}") for i in range(n_sessions)]
        for p in people:
            p.start()
            p.record(recording)
            p.rank()
    ids = [p.id for p in people]
    workers = [study.start_worker(f"bench{first_pid}-{i}", "--heartbeat-s", "2", "--stalled-s", "60")
               for i in range(n_workers)]
    engine = create_engine(study.db_url)
    try:
        study.wait_workers(n_workers)
        # hand every queued row to the workers now (the server was started --no-worker)
        dispatcher = QueueDispatcher(make_sessionmaker(engine), study.db_url)
        dispatcher.start()
        dispatcher.close()
        marks = ",".join(str(i) for i in ids)

        def done():
            with engine.connect() as conn:
                rows = conn.execute(text(
                    f"SELECT status FROM jobs WHERE kind = 'process' AND session_id IN ({marks})"
                )).all()
            return len(rows) == len(ids) and all(r[0] in ("done", "failed") for r in rows)

        cluster.wait_for(done, 600, f"{n_sessions} sessions processed by {n_workers} worker(s)", interval=0.2)
        with engine.connect() as conn:
            first, last = conn.execute(text(
                f"SELECT min(started_at), max(finished_at) FROM jobs WHERE session_id IN ({marks})"
            )).one()
            failed = conn.execute(text(
                f"SELECT count(*) FROM jobs WHERE status = 'failed' AND session_id IN ({marks})"
            )).scalar()
            frames = conn.execute(text(
                f"SELECT coalesce(sum(n_frames), 0) FROM clips WHERE session_id IN ({marks})"
            )).scalar()
        if failed:
            raise RuntimeError(f"{failed} job(s) failed with {n_workers} worker(s)")
        seconds = max((last - first).total_seconds(), 1e-3)
    finally:
        engine.dispose()
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.popen.wait(30)
    return {"seconds": seconds, "sessions_per_min": 60.0 * n_sessions / seconds,
            "frames_per_s": float(frames) / seconds}


def session_processing_figures(quick: bool = False) -> dict:
    """Sessions processed per minute with 1 and 2 ``fergi worker`` processes.

    Parameters
    ----------
    quick : bool
        1 session per worker count (well under a minute: the code paths, not a
        meaningful ratio); otherwise 6.

    Returns
    -------
    dict
        ``workers`` ([1, 2]), ``sessions`` per run, ``sessions_per_min``,
        ``frames_per_s`` (clip frames analysed per second, all workers together) and
        ``ratio`` (sessions/min relative to one worker).

    Raises
    ------
    RuntimeError
        PostgreSQL binaries missing (the reason says which), or a job failed.
    """
    services = _load("services")
    cluster = _load("study_cluster")
    reason = services.postgres_missing()
    if reason:
        raise RuntimeError(f"session-processing figures need PostgreSQL: {reason}")
    n_sessions = 1 if quick else 6
    figures: dict = {"workers": [], "sessions": [], "sessions_per_min": [], "frames_per_s": [], "seconds": []}
    with tempfile.TemporaryDirectory(prefix="fergi-scale-") as tmp, services.throwaway_postgres() as url:
        root = Path(tmp)
        recording = cluster.make_recording(root / "recording.webm").read_bytes()
        study = cluster.StudyCluster(root / "cluster", url, str(root / "media"))
        try:
            study.start_server("--no-worker")
            for n_workers, first_pid in ((1, 100), (2, 200)):
                run = _run_batch(study, cluster, recording, n_workers, n_sessions, first_pid)
                figures["workers"].append(n_workers)
                figures["sessions"].append(n_sessions)
                figures["seconds"].append(round(run["seconds"], 2))
                figures["sessions_per_min"].append(round(run["sessions_per_min"], 2))
                figures["frames_per_s"].append(round(run["frames_per_s"], 1))
        finally:
            study.stop()
    base = figures["sessions_per_min"][0]
    figures["ratio"] = [round(v / base, 2) for v in figures["sessions_per_min"]]
    for n, rate, fps, ratio in zip(figures["workers"], figures["sessions_per_min"], figures["frames_per_s"],
                                   figures["ratio"], strict=True):
        print(f"study processing, {n} fergi worker(s): {rate:.2f} sessions/min, {fps:.1f} clip frames/s, "
              f"x{ratio:.2f} of one worker", flush=True)
    return figures


if __name__ == "__main__":  # pragma: no cover
    started = time.monotonic()
    session_processing_figures(quick="--quick" in sys.argv)
    print(f"({time.monotonic() - started:.0f} s)")
