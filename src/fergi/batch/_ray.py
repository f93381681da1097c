"""The Ray executor: extraction and scoring on a Ray cluster (``pip install 'fergi[ray]'``).

Extraction runs one Ray task per video. The ``geometry`` estimator runs inside the
task (CPU only); ``ir50`` runs in actors (``num_gpus`` each, one per GPU by default)
that batch the faces of all the videos being decoded at once. Scoring runs one actor
per GPU for each scorer, the images split across them. Workers read videos and
images by path (shared storage); feature files come back to the driver, which writes
them, so an output folder on the driver's disk is all a cluster needs for outputs.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np

from fergi._atomic import publish, temporary_beside
from fergi._errors import FergiError
from fergi.au import get_au_estimator_spec
from fergi.batch import _jobs
from fergi.batch._jobs import FACE_BATCH, ExtractionJob, OnRecord, failed_record, progress_bar
from fergi.scorers import create_scorer

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'fergi[ray]'"
_ADDRESS = re.compile(r"^(auto|ray://[^\s:/]+:\d+|[^\s:/]+:\d+)$")


def _import_ray():
    try:
        import ray  # deferred: ray, an optional heavy dependency
    except ImportError:
        raise FergiError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _reraise_user_error(ray, exc: BaseException) -> None:
    """Raise the FergiError a Ray task or actor raised as one plain line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FergiError):
        raise FergiError(str(cause)) from None
    if isinstance(exc, FergiError) and not isinstance(exc, ray.exceptions.RayError):
        raise exc


def _init_keeping_sigterm(ray, **options) -> None:
    """``ray.init``, keeping a SIGTERM handler the caller installed.

    ``ray.init`` replaces it with one that exits at once; ``fergi extract`` turns
    SIGTERM into the Ctrl-C path instead (tasks cancelled, report written, Ray shut
    down by :meth:`RayExecutor.session`).
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(**options)
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


class RayExecutor:
    """Run batch work on a Ray cluster.

    Parameters
    ----------
    address : str, optional
        ``"auto"`` (the cluster this machine belongs to, from ``ray start``),
        ``"ray://HOST:PORT"`` (Ray Client) or ``"HOST:PORT"``. None: a Ray session
        already started in this process, else a new local Ray with ``num_cpus``.
    num_cpus : int, optional
        CPUs of the local Ray started when there is no ``address`` (default all).
    gpus_per_actor : float, optional
        GPUs of each model actor (``ir50`` estimator, scorers); default 1 when the
        cluster has GPUs, else 0 (CPU actors).
    actors : int, optional
        Model actors; default one per ``gpus_per_actor`` GPUs of the cluster, or 1
        without GPUs.

    Raises
    ------
    fergi.FergiError
        A malformed address or a bad count.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 gpus_per_actor: float | None = None, actors: int | None = None):
        if address is not None and not _ADDRESS.match(address):
            raise FergiError(f"--ray-address {address!r}: expected auto or ray://HOST:PORT")
        if num_cpus is not None and num_cpus < 1:
            raise FergiError(f"--workers must be at least 1, got {num_cpus}")
        if gpus_per_actor is not None and not gpus_per_actor >= 0:
            raise FergiError(f"--ray-gpus-per-actor must be 0 or more, got {gpus_per_actor}")
        if actors is not None and actors < 1:
            raise FergiError(f"--ray-actors must be at least 1, got {actors}")
        self.address = address
        self.num_cpus = num_cpus
        self.gpus_per_actor = gpus_per_actor
        self.actors = actors
        self._depth = 0
        self._started = False
        self._scorer_actors: list = []

    # -- the Ray session ------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        """Connect to (or start) Ray for the duration of the block; re-entrant.

        A Ray started here is shut down at the end; one that was already running in
        this process, or a cluster reached by address, is left running.
        """
        ray = _import_ray()
        if self._depth == 0:
            self._started = False
            if ray.is_initialized():
                logger.info("using the Ray session already started in this process")
            elif self.address is None:
                _init_keeping_sigterm(ray, num_cpus=self.num_cpus, include_dashboard=False,
                                      logging_level=logging.WARNING)
                self._started = True
            else:
                try:
                    _init_keeping_sigterm(ray, address=self.address, logging_level=logging.WARNING)
                except Exception as exc:  # ConnectionError, RuntimeError, ...: one line
                    raise FergiError(
                        f"--ray-address {self.address}: cannot connect to a Ray cluster "
                        f"({_first_line(exc)})"
                    ) from None
                self._started = True  # disconnect this driver (the cluster keeps running)
        self._depth += 1
        try:
            yield ray
        finally:
            self._depth -= 1
            if self._depth == 0:
                for actor in self._scorer_actors:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                self._scorer_actors = []
                if self._started:
                    ray.shutdown()
                    self._started = False

    def _actor_layout(self, ray, what: str) -> tuple[float, int]:
        """``(GPUs per actor, number of actors)`` on this cluster."""
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if cluster_gpus >= 1 else 0.0
        if gpus > cluster_gpus:
            raise FergiError(
                f"--ray-gpus-per-actor {gpus:g}: the Ray cluster has {cluster_gpus:g} GPU(s) "
                f"for the {what} actors (use 0 for CPU actors)"
            )
        if self.actors is not None:
            n = self.actors
        elif gpus > 0:
            n = max(1, int(cluster_gpus // gpus))
        else:
            n = 1
        if gpus > 0 and n * gpus > cluster_gpus + 1e-9:
            # Actors that cannot all be placed would wait for GPUs forever.
            raise FergiError(
                f"--ray-actors {n} x --ray-gpus-per-actor {gpus:g}: more than the "
                f"{cluster_gpus:g} GPU(s) of the Ray cluster"
            )
        return gpus, n

    # -- extraction -----------------------------------------------------------------
    def run_extraction(
        self, jobs: list[ExtractionJob], estimator: str, checkpoint: str | None,
        on_record: OnRecord,
    ) -> None:
        """Extract ``jobs`` as Ray tasks, calling ``on_record(record)`` as each finishes.

        The feature files are written here, by the driver, from the bytes each task
        returns: the same bytes the local executor writes.
        """
        if not jobs:
            return
        with self.session() as ray:
            actors = []
            try:
                if get_au_estimator_spec(estimator).input_kind == "face":
                    gpus, n = self._actor_layout(ray, estimator)
                    actor_class = ray.remote(_FaceActor).options(
                        # The actor's CPU work happens while the tasks feeding it wait
                        # on it; reserving none keeps it from starving them (or a
                        # one-CPU cluster from deadlocking).
                        num_cpus=0, num_gpus=gpus, max_concurrency=64,
                    )
                    actors = [actor_class.remote(estimator, checkpoint) for _ in range(n)]
                    try:
                        devices = ray.get([a.ready.remote() for a in actors])
                    except ray.exceptions.RayError as exc:
                        _reraise_user_error(ray, exc)
                        raise FergiError(f"--estimator {estimator}: the model actors did not start "
                                         f"({_first_line(exc)})") from None
                    logger.info("%d %s actor(s) on %s", n, estimator, ", ".join(devices))
                task = ray.remote(_extract_task).options(num_cpus=1, max_retries=1)
                refs = {
                    task.remote(job, estimator, checkpoint, actors[i % len(actors)] if actors else None): job
                    for i, job in enumerate(jobs)
                }
                self._collect(ray, refs, on_record)
            finally:
                for actor in actors:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)

    @staticmethod
    def _collect(ray, refs: dict, on_record: OnRecord) -> None:
        pending = list(refs)
        try:
            with (
                progress_bar(total=len(refs), unit="video", position=0) as videos,
                progress_bar(unit="frame", position=1, leave=False, desc="frames done") as frames,
            ):
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    for ref in done:
                        job = refs[ref]
                        try:
                            record, payload = ray.get(ref)
                        except ray.exceptions.RayError as exc:
                            # A worker lost or killed (twice): this video fails, not the batch.
                            record, payload = failed_record(job, f"Ray task failed ({_first_line(exc)})"), None
                        if payload is not None:
                            try:
                                _publish_bytes(payload, Path(job.output))
                            except FergiError as exc:
                                record = {**record, "status": "failed", "error": str(exc)}
                        on_record(record)
                        videos.update(1)
                        frames.update(record.get("frames") or 0)
        except BaseException:
            # Ctrl-C, SIGTERM or an error here: stop the videos still running.
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise

    # -- scoring --------------------------------------------------------------------
    def scorer_pool(self, name: str, *, device=None, batch_size: int = 16, **options):
        """Scorer ``name`` loaded in the session's scorer actors, for ``score_folder``.

        Call inside :meth:`session`; the actors (one per GPU, or ``actors``) are made
        on first use and stopped with the session. The returned pool has
        ``fingerprint``, ``iter_batches(images, prompts)`` and ``close()``.
        """
        if self._depth == 0:
            raise RuntimeError("RayExecutor.scorer_pool: call it inside executor.session()")
        ray = _import_ray()
        if not self._scorer_actors:
            gpus, n = self._actor_layout(ray, "scorer")
            cpus = float(ray.cluster_resources().get("CPU", 0))
            if not gpus and n > cpus:
                raise FergiError(f"--ray-actors {n}: more CPU scorer actors than the {cpus:g} "
                                 "CPUs of the Ray cluster")
            actor_class = ray.remote(_ScorerActor).options(num_cpus=0 if gpus else 1, num_gpus=gpus)
            self._scorer_actors = [actor_class.remote() for _ in range(n)]
        return _RayScorerPool(ray, self._scorer_actors, name, device=device, batch_size=batch_size,
                              options=options)


def _publish_bytes(payload: bytes, path: Path) -> None:
    """Write a features file atomically (a crash never leaves half a file)."""
    fd, tmp = temporary_beside(path, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FergiError(f"{path}: cannot write ({exc.strerror})") from None
    publish(tmp, path)


def _extract_task(job: ExtractionJob, estimator: str, checkpoint: str | None, actor):
    """One video in a Ray worker: ``(record, bytes of the features file or None)``."""
    if actor is not None:
        model = _RemoteFaces(actor)
    else:
        # Ray reuses worker processes: the analyser and estimator are made once each.
        key = (estimator, checkpoint)
        if _jobs._WORKER.get("key") != key:
            _jobs._init_worker(estimator, checkpoint)
            _jobs._WORKER["key"] = key
        model = _jobs._WORKER["estimator"]
    with tempfile.TemporaryDirectory(prefix="fergi-ray-") as tmp:
        path = Path(tmp) / Path(job.output).name
        record = _jobs._process(job, estimator=model, output=path)
        payload = path.read_bytes() if record["status"] == "ok" else None
    return record, payload


class _RemoteFaces:
    """An appearance estimator whose forward passes run in a (GPU) model actor."""

    input_kind = "face"
    batch_size = FACE_BATCH

    def __init__(self, actor):
        self.actor = actor

    def predict(self, faces):
        import ray  # deferred: ray, an optional heavy dependency

        return ray.get(self.actor.predict.remote(np.asarray(faces, dtype=np.float32)))


class _FaceActor:
    """Holds one ``ir50`` model and runs the faces of every video task that calls it.

    Calls arrive on up to 64 threads (one per waiting video); a single loop takes all
    faces waiting, runs them through the model in fixed-size batches and hands each
    caller its rows: the batches fill up across videos.
    """

    def __init__(self, estimator: str, checkpoint: str | None):
        import ray  # deferred: ray, an optional heavy dependency

        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.error = None
        try:
            self.model = _jobs.make_estimator(estimator, checkpoint, device=self.device)
        except FergiError as exc:
            self.error = str(exc)
            return
        self.waiting: list[dict] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._loop, name="fergi-faces", daemon=True).start()

    def ready(self) -> str:
        if self.error is not None:
            raise FergiError(self.error)
        return self.device

    def predict(self, faces):
        slot = {"faces": faces, "done": threading.Event()}
        with self.cond:
            self.waiting.append(slot)
            self.cond.notify()
        slot["done"].wait()
        if "error" in slot:
            raise slot["error"]
        return slot["out"]

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting:
                    self.cond.wait()
                taken, self.waiting = self.waiting, []
            try:
                out = self.model.predict(np.concatenate([s["faces"] for s in taken]))
            except Exception as exc:  # handed to every caller: their videos fail, not this loop
                for slot in taken:
                    slot["error"] = exc
            else:
                start = 0
                for slot in taken:
                    slot["out"] = out[start : start + len(slot["faces"])]
                    start += len(slot["faces"])
            for slot in taken:
                slot["done"].set()


class _ScorerActor:
    """Holds one scorer model at a time; scores one batch of images per call.

    Kept for a whole ``score`` run and loaded with each scorer in turn, so the
    process start and the imports (torch, transformers) are paid once per actor.
    """

    def __init__(self):
        self.scorer = None

    def load(self, name: str, device, batch_size: int, options: dict) -> str:
        import ray  # deferred: ray, an optional heavy dependency

        self.unload()
        if device is None:
            device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.scorer = create_scorer(name, device=device, batch_size=batch_size, **options)
        return self.scorer.fingerprint

    def unload(self) -> None:
        if self.scorer is not None:
            on_cuda = self.scorer.device.type == "cuda"
            self.scorer = None
            gc.collect()
            if on_cuda:
                import torch  # deferred: torch, heavy (only a CUDA scorer needs it here)

                torch.cuda.empty_cache()

    def score(self, start: int, images: list, prompts: list):
        return start, self.scorer.score(images, prompts)


class _RayScorerPool:
    """One scorer loaded in every scorer actor (one per GPU, or ``actors``)."""

    def __init__(self, ray, actors: list, name: str, *, device, batch_size: int, options: dict):
        self._ray = ray
        self.actors = actors
        self.batch_size = int(batch_size)
        try:
            prints = ray.get([a.load.remote(name, device, batch_size, options) for a in actors])
        except ray.exceptions.RayError as exc:
            _reraise_user_error(ray, exc)
            raise FergiError(f"{name}: the scorer actors did not start ({_first_line(exc)})") from None
        self.fingerprint = prints[0]

    def iter_batches(self, images, prompts):
        """Yield ``(positions, scores)`` per batch, as the actors finish them.

        The batches are the ones a local scorer makes (``batch_size`` consecutive
        images), so every score is computed exactly as it is locally.
        """
        from ray.util import ActorPool  # deferred: ray, an optional heavy dependency

        images = [str(p) for p in images]
        prompts = list(prompts)
        chunks = [(s, images[s : s + self.batch_size], prompts[s : s + self.batch_size])
                  for s in range(0, len(images), self.batch_size)]
        pool = ActorPool(self.actors)
        results = pool.map_unordered(lambda actor, c: actor.score.remote(*c), chunks)
        while True:
            try:
                start, values = next(results)
            except StopIteration:
                return
            except self._ray.exceptions.RayError as exc:
                _reraise_user_error(self._ray, exc)
                raise FergiError(f"scoring on Ray failed ({_first_line(exc)})") from None
            yield range(start, start + len(values)), values

    def close(self) -> None:
        """Free the model in every actor (the actors stay for the next scorer)."""
        with contextlib.suppress(Exception):
            self._ray.get([a.unload.remote() for a in self.actors])
