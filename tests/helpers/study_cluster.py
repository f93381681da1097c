"""A study spread over OS processes, for the distributed test and ``bench_scale``.

One ``fergi serve`` and any number of ``fergi worker`` processes (``python -m
fergi.cli._main``) against one PostgreSQL database, with media in a folder or on an S3
server (moto's, in this process), and participants simulated over HTTP with real
WebM recordings. Nothing here is a fake: every request and job goes through the
real server and workers.
"""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.services import free_port

REPO = Path(__file__).resolve().parents[2]
#: The `fergi` command, as the installed entry point runs it.
FERGI = "import sys; from fergi.cli._main import main; sys.exit(main(sys.argv[1:]))"
ADMIN_TOKEN = "test-admin"
N_IMAGES = 2
CHUNK_BYTES = 24_000
#: (image, first event time): 1 s baseline and 1 s presentation each (settings below).
PRESENTATIONS = ((1, 0.2), (2, 2.6))
FORM = {
    "animate_objects": [{"name": "cat", "quantity": 1, "activity": "", "characteristics": "furry"}],
    "inanimate_objects": [{"name": "flower", "quantity": 1}],
    "interactional_relations": [{"entity1": "animate:0", "entity2": "inanimate:0", "relation": "looking at"}],
    "positional_relations": [],
    "location": "a garden",
    "style": "watercolor",
    "keywords": "soft light",
}
ANSWER = {
    "missing_elements": "",
    "overall_rating": 5,
    "alignment_rating": 4,
    "fidelity_rating": 6,
    "issues": [],
    "emotions": ["amused"],
}


def make_recording(path: Path) -> Path:
    """A ~5 s VP9 WebM of a face: neutral, then a smile (as the browser records it)."""
    from skimage import data

    from fergi.face import write_reaction_video

    return write_reaction_video(path, data.astronaut(), neutral_s=2.5, expression_s=2.5, smile=1.0)


def fresh_database(server_url: str) -> str:
    """A new, empty database on the PostgreSQL server of ``server_url``; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"fergi_{uuid.uuid4().hex[:10]}"
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.set(database=name).render_as_string(hide_password=False)


class MotoS3:
    """moto's S3 server on 127.0.0.1 (threaded, in this process), with one bucket.

    Start one per test session (``tests/study/jobs/conftest.py``) and give each test
    :meth:`with_new_bucket`.
    """

    def __init__(self, bucket: str | None = None) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        # moto keeps its buckets per process: a fresh name per server
        self.bucket = bucket or f"fergi-media-{uuid.uuid4().hex[:8]}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.fs().mkdir(self.bucket)

    def with_new_bucket(self) -> MotoS3:
        """The same server with a fresh, empty bucket: tests share a server, never a bucket."""
        other = copy.copy(self)
        other.bucket = f"fergi-media-{uuid.uuid4().hex[:8]}"
        other.fs().mkdir(other.bucket)
        return other

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(
            key="testing", secret="testing", endpoint_url=self.env["AWS_ENDPOINT_URL"],
            use_listings_cache=False, skip_instance_cache=True,
        )

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    tmp: Path
    stopped: bool = False  # stopped on purpose (not a crash)

    def terminate(self) -> None:
        self.stopped = True
        if self.popen.poll() is None:
            self.popen.terminate()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class StudyCluster:
    """Starts and stops the processes of a distributed study."""

    root: Path
    db_url: str
    media: str
    extra_env: dict = field(default_factory=dict)
    procs: list = field(default_factory=list)
    port: int = 0

    def env(self, tmp: Path) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERGI_")}
        env.update(
            PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}",
            FERGI_ADMIN_TOKEN=ADMIN_TOKEN,
            FERGI_N_IMAGES=str(N_IMAGES),
            FERGI_BASELINE_S="1",
            FERGI_PRESENT_S="1",
            FERGI_SEED="0",
            TMPDIR=str(tmp),
            OMP_NUM_THREADS="1",
            **self.extra_env,
        )
        return env

    def _start(self, name: str, args: list[str]) -> Proc:
        data = self.root / name
        tmp = self.root / f"{name}-tmp"
        data.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            [sys.executable, "-c", FERGI, "-v", *args, "--data-dir", str(data)],
            cwd=self.root, env=self.env(tmp), stdout=handle, stderr=subprocess.STDOUT,
        )
        proc = Proc(name, popen, log, tmp)
        self.procs.append(proc)
        return proc

    def start_server(self, *extra: str, timeout: float = 90) -> Proc:
        import httpx

        self.port = free_port()
        proc = self._start("serve", ["serve", "--port", str(self.port), "--db", self.db_url, "--media", self.media,
                                     *extra])
        deadline = time.monotonic() + timeout
        while True:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"fergi serve exited:\n{proc.text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fergi serve did not start:\n{proc.text()[-3000:]}")
            time.sleep(0.3)

    def start_worker(self, name: str, *extra: str) -> Proc:
        return self._start(name, ["worker", "--db", self.db_url, "--media", self.media, *extra])

    def wait_workers(self, n: int, timeout: float = 90) -> None:
        """Until ``n`` procrastinate workers have registered."""
        import psycopg

        from fergi.study.jobs import libpq_url

        deadline = time.monotonic() + timeout
        while True:
            for proc in self.procs:
                if proc.name != "serve" and not proc.stopped and proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited:\n{proc.text()[-3000:]}")
            try:
                with psycopg.connect(libpq_url(self.db_url)) as conn:
                    count = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()[0]
            except psycopg.Error:
                count = 0
            if count >= n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start:\n" + "\n".join(p.text()[-2000:] for p in self.procs))
            time.sleep(0.3)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(10)


class HttpParticipant:
    """One participant over HTTP: consent, prompt, webcam check, recording, surveys, ranking."""

    def __init__(self, client, participant_id: str) -> None:
        response = client.post("/api/sessions", json={"participant_id": participant_id})
        response.raise_for_status()
        body = response.json()
        self.client = client
        self.id = body["session_id"]
        self.headers = {"X-Session-Token": body["token"]}
        self.state = body["state"]
        self.sent: dict[int, str] = {}  # seq -> sha256 of the bytes sent

    def call(self, method: str, suffix: str, **kwargs):
        headers = {**self.headers, **kwargs.pop("headers", {})}
        response = self.client.request(method, f"/api/sessions/{self.id}{suffix}", headers=headers, **kwargs)
        if response.status_code >= 300:
            raise AssertionError(f"{method} {suffix}: {response.status_code} {response.text}")
        return response.json()

    def start(self) -> None:
        self.call("POST", "/consent", json={"agree": True, "consent_version": "1", "share_video": True})
        if self.state["session_type"] == "structured":
            prompt = self.call("POST", "/prompt/generate", json={"form": FORM})["prompt"]
        else:
            prompt = "A painting of a dog in the style of Van Gogh"
        self.call("PUT", "/prompt", json={"prompt": prompt})

    def record(self, recording: bytes) -> None:
        import io

        from PIL import Image
        from skimage import data

        buffer = io.BytesIO()
        Image.fromarray(data.astronaut()).save(buffer, format="JPEG")
        self.call("POST", "/webcam-check", content=buffer.getvalue(), headers={"Content-Type": "image/jpeg"})
        seg = self.call("POST", "/recording/segments", json={"mime_type": "video/webm;codecs=vp9"})["segment"]
        chunks = [recording[i : i + CHUNK_BYTES] for i in range(0, len(recording), CHUNK_BYTES)]
        for seq, chunk in enumerate(chunks):
            self.call("PUT", f"/recording/{seg}/chunks/{seq}", content=chunk, headers={"Content-Type": "video/webm"})
            self.sent[seq] = hashlib.sha256(chunk).hexdigest()
        self.call("POST", f"/recording/{seg}/complete", json={"n_chunks": len(chunks)})
        for image, start in PRESENTATIONS:
            for kind, offset in (("baseline_start", 0.0), ("image_shown", 1.0), ("image_hidden", 2.0)):
                self.call("POST", "/events", json={"segment": seg, "image_index": image, "kind": kind,
                                                   "video_time": start + offset})
            self.call("PUT", f"/images/{image}/answer", json=ANSWER)

    def rank(self) -> None:
        self.call("PUT", "/ranking", json={"order": [2, 1]})


def job_rows(db_url: str) -> list[dict]:
    """Every row of the study's jobs table."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT id, session_id, kind, status, attempts, error, started_at, finished_at FROM jobs"
            )).mappings().all()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
