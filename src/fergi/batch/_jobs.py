"""The extraction job and what runs it: one video turned into one per-frame features file.

The job, the worker's estimator and :func:`_process` (one video, never raises) live
here, below the executors (:class:`fergi.batch.LocalExecutor`,
:class:`fergi.batch.RayExecutor`), which only run the jobs they are given and hand back
one record per video. Planning (which videos, which output each gets, which are
already done), the report and ``features_meta.json`` are :mod:`fergi.batch._extract`,
above both.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from fergi._errors import FergiError
from fergi.au import create_au_estimator, extract_features, write_features

logger = logging.getLogger(__name__)

# Faces per forward pass of an appearance estimator (ir50), everywhere: the last
# partial batch is padded, so a frame's AU values never depend on which other frames
# (of its own video or, on Ray, of other videos) shared its batch.
FACE_BATCH = 64


@dataclass(frozen=True)
class ExtractionJob:
    """One video to extract into one features file.

    Attributes
    ----------
    video : str
        The video file, as found (a path every executor's workers can read).
    output : str
        The features file to write (``.csv`` or ``.parquet``).
    fps : float
        Standardised frame rate.
    baseline_seconds : float or None
        First seconds of the video used as the neutral face (geometry).
    baseline : str or None
        A baseline clip used as the neutral face (geometry; may be ``video`` itself).
    decimals : int
        Decimals of the values in CSV.
    preprocessing : str or None
        Face preprocessing (``"authors"`` or ``"fergi"``; None: the estimator's default).
    landmarks : str or None
        MobileFaceNet weights of the ``authors`` preprocessing (None: fergi's model folder).
    """

    video: str
    output: str
    fps: float = 30.0
    baseline_seconds: float | None = None
    baseline: str | None = None
    decimals: int = 3
    preprocessing: str | None = None
    landmarks: str | None = None


class _FixedBatch:
    """An appearance estimator that always runs forward passes of ``size`` faces.

    The last partial batch is padded with blank faces and their outputs dropped: a
    network's numbers depend (in the last bits) on the batch size the backend sees,
    so a fixed size makes each face's values the same whichever faces, of whichever
    videos, it is batched with, and the files of every executor byte-identical.
    """

    input_kind = "face"

    def __init__(self, estimator, size: int = FACE_BATCH):
        self.estimator = estimator
        self.batch_size = int(size)
        self.spec = getattr(estimator, "spec", None)

    def predict(self, faces):
        faces = np.asarray(faces, dtype=np.float32)
        n, size = len(faces), self.batch_size
        out = []
        for start in range(0, n, size):
            chunk = faces[start : start + size]
            if len(chunk) < size:
                pad = np.zeros((size - len(chunk), *faces.shape[1:]), dtype=faces.dtype)
                chunk = np.concatenate([chunk, pad])
            out.append(np.asarray(self.estimator.predict(chunk))[: min(size, n - start)])
        return np.concatenate(out) if out else np.zeros((0, 12))


def make_estimator(estimator: str, checkpoint: str | None, **options):
    """The AU estimator a batch worker uses (appearance models at a fixed batch size)."""
    if checkpoint is not None:
        options["checkpoint"] = checkpoint
    made = create_au_estimator(estimator, **options)
    if getattr(made, "input_kind", "landmarks") == "face":
        return _FixedBatch(made)
    return made


# Worker state: one face analyser and estimator per process, created once.
_WORKER: dict = {}


def _init_worker(estimator: str, checkpoint: str | None, in_pool: bool = False) -> None:
    if in_pool:
        # Ctrl-C reaches the whole process group: the parent alone decides to stop
        # the workers (it terminates them), so a worker must not die half-way alone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("absl").setLevel(logging.ERROR)
    _WORKER["estimator"] = make_estimator(estimator, checkpoint)


def _process(job: ExtractionJob, progress=None, *, estimator=None, output=None) -> dict:
    """Extract one video; never raises (errors go into the returned record).

    ``estimator`` defaults to this process's worker estimator; ``output`` (default
    ``job.output``) is where the file is written.
    """
    t = time.perf_counter()
    cpu = time.process_time()
    record = {
        "video": job.video,
        "output": job.output,
        "status": "ok",
        "frames": 0,
        "face_share": float("nan"),
        "seconds": 0.0,
        "error": "",
    }
    try:
        table = extract_features(
            job.video,
            estimator=_WORKER["estimator"] if estimator is None else estimator,
            fps=job.fps,
            baseline_seconds=job.baseline_seconds,
            baseline=job.baseline,
            progress=progress,
            preprocessing=job.preprocessing,
            landmarks=job.landmarks,
        )
        write_features(table, job.output if output is None else output, decimals=job.decimals)
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
            status="failed", error=f"{job.video}: {type(exc).__name__}: {exc}".splitlines()[0]
        )
    record["seconds"] = time.perf_counter() - t
    record["cpu_seconds"] = time.process_time() - cpu
    return record


def failed_record(job: ExtractionJob, reason: str) -> dict:
    """The report row of a job whose worker failed (crashed, lost) before answering."""
    return {
        "video": job.video,
        "output": job.output,
        "status": "failed",
        "error": f"{job.video}: {reason}".splitlines()[0],
    }


def progress_bar(**kwargs):
    """A tqdm bar on stderr, shown only on a terminal."""
    return tqdm(file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True, **kwargs)


OnRecord = Callable[[dict], None]
