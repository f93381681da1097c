"""The local executor: this process, or a pool of worker processes on this machine."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from fergi._errors import FergiError
from fergi.batch import _jobs
from fergi.batch._jobs import ExtractionJob, OnRecord, failed_record, progress_bar


class LocalExecutor:
    """Run extraction jobs in this process (``workers=1``) or in worker processes.

    Parameters
    ----------
    workers : int, default 1
        Worker processes (``fergi extract --workers``).

    Raises
    ------
    fergi.FergiError
        ``workers`` below 1.
    """

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise FergiError(f"--workers must be at least 1, got {workers}")
        self.workers = int(workers)

    def run_extraction(
        self, jobs: list[ExtractionJob], estimator: str, checkpoint: str | None,
        on_record: OnRecord,
    ) -> None:
        """Extract ``jobs``, calling ``on_record(record)`` as each video finishes."""
        if not jobs:
            return
        if self.workers == 1 or len(jobs) == 1:
            _jobs._init_worker(estimator, checkpoint)
            with (
                progress_bar(total=len(jobs), unit="video", position=0) as videos,
                progress_bar(unit="frame", position=1, leave=False) as frames,
            ):
                for job in jobs:
                    frames.set_description(Path(job.video).name[:30])
                    on_record(_jobs._process(job, progress=frames.update))
                    videos.update(1)
            return

        with (
            progress_bar(total=len(jobs), unit="video", position=0) as videos,
            progress_bar(unit="frame", position=1, leave=False, desc="frames done") as frames,
        ):

            def on_result(job: ExtractionJob, record: dict | None, error: Exception | None):
                if error is not None:
                    reason = (
                        f"worker process crashed ({error})"
                        if isinstance(error, BrokenProcessPool)
                        else f"{type(error).__name__}: {error}"
                    )
                    record = failed_record(job, reason)
                on_record(record)
                videos.update(1)
                # Frames arrive per finished video: workers cannot share a live counter cheaply.
                frames.update(record.get("frames") or 0)

            _run_pool(
                _jobs._process,
                jobs,
                self.workers,
                on_result,
                initializer=_jobs._init_worker,
                initargs=(estimator, checkpoint, True),
            )


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
