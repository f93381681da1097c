"""Study server under load: N participants recording at once, at real-time pace.

    python benchmarks/bench_study.py [--participants 25,50,100,200,300] [--seconds 60]
                                     [--chunk-kb 80] [--db postgresql+psycopg://...] [--quick]

For each N of the sweep, a fresh ``fergi serve`` is started as a subprocess, as the
deployment guide (docs/study.md) recommends (``--workers 2``, its worker on, SQLite in the data folder unless
``--db``; no TLS proxy in front). N simulated participants (asyncio + httpx, one
process) arrive over ``--ramp-s`` seconds; each goes through the API as the browser does (session, consent,
prompt, webcam check with a face photograph, a recording segment), then uploads one
chunk per second for ``--seconds`` seconds, as MediaRecorder does with 1 s timeslices.
Chunk 0 is the start of a real VP9 WebM recording (its EBML header), the later chunks
are further bytes of it padded with random bytes to ``--chunk-kb`` (the server does
not decode chunks on upload; no image is presented, so no real-time analysis runs and
the worker only generates each session's images). ``/healthz`` is polled every 100 ms
throughout.

Reported per N: participants held (every chunk acknowledged), chunk PUT latency p50,
p95 and p99, errors, chunks verified after the server stopped (a database row and a
file of the acknowledged size and sha256 for every acknowledged chunk), ``/healthz``
p99, and the knee: the smallest N whose chunk p99 passes 1 s. The goal on 2 cores is
200 participants with p99 < 1 s, 0 errors and ``/healthz`` p99 < 100 ms. The load
generator shares the machine with the server; the load average is printed with each
figure, and the server's CPU per chunk: over the whole run, and once every participant
is recording and every session's images are generated (the chunk route's own cost,
the set-up requests, face checks and image generation left out; less sensitive to other load on the machine than the latencies). A set-up request
answered 503 is sent again after its Retry-After, as the page does, and counted.

``--quick`` (what the test suite runs): 3 participants x 3 chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICK = {"participants": "3", "seconds": 3, "ramp_s": 0.5}
KNEE_S = 1.0
HEALTHZ_GOAL_MS = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recording_bytes(tmp: Path) -> bytes:
    """A short real VP9 WebM recording of a face (PyAV), as MediaRecorder would start one."""
    from skimage import data

    from fergi.face import write_reaction_video

    path = write_reaction_video(tmp / "recording.webm", data.astronaut(), neutral_s=2.0, expression_s=1.0)
    return path.read_bytes()


def make_chunks(recording: bytes, n: int, size: int, seed: int = 0) -> list[bytes]:
    """``n`` chunks of about ``size`` bytes: the recording's bytes, then random bytes."""
    rng = random.Random(seed)
    stream = bytearray(recording)
    while len(stream) < n * size:
        stream.extend(rng.randbytes(size))
    return [bytes(stream[i * size:(i + 1) * size]) for i in range(n)]


def face_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG")
    return buffer.getvalue()


def start_server(data_dir: Path, db: str | None, workers: int = 1) -> tuple[subprocess.Popen, str, Path]:
    """``fergi serve`` as docs/study.md recommends, on a free local port."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERGI_")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "fergi", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    if db:
        command += ["--db", db]
    if workers > 1:
        command += ["--workers", str(workers)]
    log = data_dir.parent / f"{data_dir.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"fergi serve stopped: {log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base, log
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("fergi serve did not come up within 120 s")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (``--workers``
    processes) (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(cpu_seconds(int(child)) for child in children)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


FORM = {
    "animate_objects": [{"name": "cat", "quantity": 1, "activity": "sleep", "characteristics": "furry"}],
    "inanimate_objects": [{"name": "flower", "quantity": 1}],
    "interactional_relations": [],
    "positional_relations": [],
    "location": "a garden",
    "style": "watercolor",
    "keywords": "soft light",
}


class Run:
    """What the participants of one sweep point measured."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.sent_at: list[float] = []  # when each chunk PUT was sent
        self.recording_since: list[float] = []  # when each participant started recording
        self.health: list[float] = []
        self.errors: list[str] = []
        self.acknowledged: dict[tuple[int, int, int], tuple[int, str]] = {}
        self.held = 0
        self.n = 0  # participants of the run
        self.sample_cpu = None  # the server's CPU seconds so far (a callable), if measured
        # Steady state: when every participant's set-up was over (recording, or failed),
        # and the server's CPU seconds then.
        self.set_up = 0
        self.steady_since = float("inf")
        self.steady_cpu0: float | None = None
        self.setup_retries = 0  # 503s of set-up requests, sent again after Retry-After as the page does

        self.generated = 0  # sessions whose images are all generated (or that failed)

    def setup_over(self) -> None:
        self.set_up += 1
        self._maybe_steady()

    def images_over(self) -> None:
        self.generated += 1
        self._maybe_steady()

    def _maybe_steady(self) -> None:
        # Steady once every set-up is over and the worker has generated every session's
        # images: from then on the server does nothing but store chunks (and /healthz).
        if self.set_up == self.generated == self.n:
            self.steady_since = time.perf_counter()
            if self.sample_cpu is not None:
                self.steady_cpu0 = self.sample_cpu()


async def participant(
    base: str, run: Run, pid: str, delay: float, chunks: list[tuple[bytes, str]], jpeg: bytes
) -> None:
    import httpx

    await asyncio.sleep(delay)
    # One connection per participant, as a browser tab keeps one: a shared pool of
    # hundreds of connections costs the load generator more CPU than the uploads.
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(60.0)) as client:
        await _participant(client, run, pid, chunks, jpeg)


class _Retrying:
    """The page's set-up requests: a 503 is sent again after its Retry-After (six times
    at most, as study.js does); each retry is counted."""

    def __init__(self, client, run: Run) -> None:
        self.client, self.run = client, run

    async def _send(self, method: str, *args, **kwargs):
        for attempt in range(7):
            response = await getattr(self.client, method)(*args, **kwargs)
            if response.status_code != 503 or attempt == 6:
                return response
            self.run.setup_retries += 1
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        return response

    async def post(self, *args, **kwargs):
        return await self._send("post", *args, **kwargs)

    async def put(self, *args, **kwargs):
        return await self._send("put", *args, **kwargs)


async def _participant(client, run: Run, pid: str, chunks: list[tuple[bytes, str]], jpeg: bytes) -> None:
    upload, client = client, _Retrying(client, run)
    try:
        r = await client.post("/api/sessions", json={"participant_id": pid})
        r.raise_for_status()
        body = r.json()
        sid, headers = body["session_id"], {"X-Session-Token": body["token"]}
        api = f"/api/sessions/{sid}"
        (await client.post(f"{api}/consent", json={"agree": True, "consent_version": "1"}, headers=headers)).raise_for_status()
        prompt = "A painting of a dog in the style of Van Gogh"
        if body["state"]["session_type"] == "structured":
            r = await client.post(f"{api}/prompt/generate", json={"form": FORM}, headers=headers)
            r.raise_for_status()
            prompt = r.json()["prompt"]
        (await client.put(f"{api}/prompt", json={"prompt": prompt}, headers=headers)).raise_for_status()
        r = await client.post(f"{api}/webcam-check", content=jpeg, headers={**headers, "Content-Type": "image/jpeg"})
        r.raise_for_status()
        r = await client.post(f"{api}/recording/segments", json={"mime_type": "video/webm;codecs=vp9", "width": 640, "height": 480}, headers=headers)
        r.raise_for_status()
        seg = r.json()["segment"]
    except Exception as exc:  # counted, the others go on
        run.errors.append(f"{pid} setup: {exc!r}"[:300])
        run.setup_over()
        run.images_over()
        return
    watcher = asyncio.create_task(_images_generated(upload, run, api, headers))
    start = time.perf_counter()
    run.recording_since.append(start)
    run.setup_over()
    ok = True
    for seq, (chunk, digest) in enumerate(chunks):
        # MediaRecorder hands over a chunk each second; a slow upload delays the next one.
        wait = start + seq + 1 - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        t = time.perf_counter()
        try:
            r = await upload.put(f"{api}/recording/{seg}/chunks/{seq}", content=chunk,
                                 headers={**headers, "Content-Type": "video/webm"})
            run.latencies.append(time.perf_counter() - t)
            run.sent_at.append(t)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code} {r.text[:200]}")
        except Exception as exc:
            run.errors.append(f"{pid} chunk {seq}: {exc!r}"[:300])
            ok = False
            break
        run.acknowledged[(sid, seg, seq)] = (len(chunk), digest)
    run.held += ok
    await watcher


async def _images_generated(client, run: Run, api: str, headers: dict) -> None:
    """Poll the session's state until its images are generated (the worker's work)."""
    import httpx

    try:
        for _ in range(600):
            try:
                r = await client.get(api, headers=headers)
            except httpx.HTTPError:  # a dropped keep-alive connection: ask again
                await asyncio.sleep(1.0)
                continue
            if r.status_code == 200:
                state = r.json()
                if len(state.get("images_ready") or []) >= state.get("n_images", 5):
                    return
            await asyncio.sleep(1.0)
    finally:
        run.images_over()


async def poll_health(client, run: Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        try:
            r = await client.get("/healthz")
            run.health.append(time.perf_counter() - t)
            if r.status_code != 200:
                run.errors.append(f"/healthz HTTP {r.status_code}")
        except Exception as exc:
            run.errors.append(f"/healthz: {exc!r}"[:300])
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass


async def drive(base: str, n: int, seconds: int, ramp_s: float, chunk_bytes: int, recording: bytes,
                sample_cpu=None) -> Run:
    import httpx

    run = Run()
    run.n, run.sample_cpu = n, sample_cpu
    jpeg = face_jpeg()
    # The same bytes for every participant (each session stores its own copy): the
    # generator's memory and CPU stay small next to the server's.
    chunks = [(c, hashlib.sha256(c).hexdigest()) for c in make_chunks(recording, seconds, chunk_bytes)]
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(60.0)) as health_client:
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_health(health_client, run, stop))
        tasks = [participant(base, run, f"b{i:04d}", ramp_s * i / max(1, n), chunks, jpeg) for i in range(n)]
        await asyncio.gather(*tasks)
        stop.set()
        await poller
    return run


def verify(run: Run, db_url: str, media: Path) -> int:
    """Acknowledged chunks found in the database and on disk, with their size and hash."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT s.session_id, s.\"index\", c.seq, c.size, c.sha256 FROM chunks c "
            "JOIN segments s ON s.id = c.segment_id"
        )).all()
    engine.dispose()
    stored = {(sid, seg, seq): (size, digest) for sid, seg, seq, size, digest in rows}
    verified = 0
    for (sid, seg, seq), (size, digest) in run.acknowledged.items():
        path = media / "sessions" / f"{sid:06d}" / "segments" / f"{seg:03d}" / f"chunk_{seq:06d}.webm"
        if stored.get((sid, seg, seq)) == (size, digest) and path.is_file():
            if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                verified += 1
    return verified


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv=None) -> dict:
    """Run the sweep; print one line per N and return the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", default="25,50,100,200,300", help="comma-separated sweep of N")
    parser.add_argument("--seconds", type=int, default=90, help="recording length per participant (chunks)")
    parser.add_argument("--chunk-kb", type=int, default=80, help="chunk size (VP9 at ~640 kbit/s: 80 kB)")
    parser.add_argument("--ramp-s", type=float, default=60.0, help="participants arrive over this many seconds")
    parser.add_argument("--db", help="database URL for the server (default: SQLite in its data folder); "
                        "emptied before each sweep point")
    parser.add_argument("--server-workers", type=int, default=2,
                        help="fergi serve --workers (default 2, the deployment of docs/study.md on 2 cores)")
    parser.add_argument("--keep", help="keep each run's data folder and server log under this folder")
    parser.add_argument("--data", help="unused (the study benchmark makes its own data); accepted for `make bench`")
    parser.add_argument("--quick", action="store_true", help="3 participants x 3 chunks, 0.5 s ramp (for tests)")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    sweep = [int(n) for n in str(args.participants).split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="fergi-bench-study-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        recording = recording_bytes(Path(tmp))
        procs = "one process" if args.server_workers == 1 else f"--workers {args.server_workers}"
        print(f"study server load: `fergi serve` ({procs}, worker on, {'--db ' + args.db.split('@')[-1] if args.db else 'SQLite'}); "
              f"{args.seconds} chunks of {args.chunk_kb} kB per participant at 1 chunk/s, arrivals over {args.ramp_s:g} s; "
              f"{os.cpu_count()} CPUs")
        runs = []
        for n in sweep:
            runs.append(_one(args, n, root / f"n{n}", recording))
    knee = next((r["participants"] for r in runs if not r["p99_ms"] <= 1000 * KNEE_S or r["errors"]), None)
    print(f"knee (chunk p99 over {KNEE_S:g} s or errors): " + (f"N = {knee}" if knee else f"not reached up to N = {sweep[-1]}"))
    return {"runs": runs, "knee": knee}


def _one(args, n: int, data_dir: Path, recording: bytes) -> dict:
    if args.db:
        from fergi.study.store import Base, make_engine

        engine = make_engine(args.db)
        Base.metadata.drop_all(engine)
        engine.dispose()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc, base, _log = start_server(data_dir, args.db, args.server_workers)
    load_before = os.getloadavg()[0]
    try:
        cpu0 = cpu_seconds(proc.pid)
        client0 = time.process_time()
        t0 = time.perf_counter()
        run = asyncio.run(drive(base, n, args.seconds, args.ramp_s, args.chunk_kb * 1024, recording,
                                sample_cpu=lambda: cpu_seconds(proc.pid)))
        wall = time.perf_counter() - t0
        cpu1 = cpu_seconds(proc.pid)
        server_cpu = cpu1 - cpu0
        client_cpu = time.process_time() - client0
        load_during = os.getloadavg()[0]
    finally:
        stop_server(proc)
    db_url = args.db or f"sqlite:///{(data_dir / 'study.sqlite3').resolve()}"
    verified = verify(run, db_url, data_dir / "media")
    # Steady state: every participant has arrived (set-up requests, face checks and image
    # generation of the arrivals are over) and is recording.
    steady = [lat for lat, t in zip(run.latencies, run.sent_at, strict=True) if t >= run.steady_since]
    # CPU per chunk once everyone records: the chunk route's own cost, without the
    # arrivals' set-up requests, face checks and image generation.
    steady_cpu = cpu1 - run.steady_cpu0 if run.steady_cpu0 is not None else float("nan")
    figures = {
        "participants": n,
        "held": run.held,
        "chunks": len(run.latencies),
        "acknowledged": len(run.acknowledged),
        "chunks_verified": verified,
        "errors": len(run.errors),
        "setup_retries": run.setup_retries,
        "p50_ms": 1000 * statistics.median(run.latencies) if run.latencies else float("nan"),
        "p95_ms": 1000 * _pct(run.latencies, 0.95),
        "p99_ms": 1000 * _pct(run.latencies, 0.99),
        "max_ms": 1000 * max(run.latencies, default=float("nan")),
        "steady_chunks": len(steady),
        "steady_p50_ms": 1000 * _pct(steady, 0.5),
        "steady_p99_ms": 1000 * _pct(steady, 0.99),
        "healthz_p99_ms": 1000 * _pct(run.health, 0.99),
        "healthz_max_ms": 1000 * max(run.health, default=float("nan")),
        "wall_s": wall,
        # The server's CPU per chunk, set-up requests and image generation included: less
        # sensitive to other load on the machine than the latencies.
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_chunk": 1000 * server_cpu / max(1, len(run.latencies)),
        "steady_cpu_ms_per_chunk": 1000 * steady_cpu / len(steady) if steady else float("nan"),
        "load_generator_cpu_s": client_cpu,
        "load_before": load_before,
        "load_during": load_during,
        "first_errors": run.errors[:3],
    }
    print(
        f"N={n:4d}: held {run.held}/{n}, chunk p50 {figures['p50_ms']:.0f} ms, p95 {figures['p95_ms']:.0f} ms, "
        f"p99 {figures['p99_ms']:.0f} ms (max {figures['max_ms']:.0f}), errors {len(run.errors)}, "
        f"chunks verified {verified}/{len(run.acknowledged)}; once all recording: p50 {figures['steady_p50_ms']:.0f} ms, "
        f"p99 {figures['steady_p99_ms']:.0f} ms ({len(steady)} chunks); /healthz p99 {figures['healthz_p99_ms']:.0f} ms "
        f"(max {figures['healthz_max_ms']:.0f}); server CPU {server_cpu:.1f} s = {figures['server_cpu_ms_per_chunk']:.1f} ms/chunk "
        f"({figures['steady_cpu_ms_per_chunk']:.1f} ms/chunk once all recording), load generator CPU {client_cpu:.1f} s; "
        f"set-up 503s sent again {run.setup_retries}; load average {load_before:.1f} before, {load_during:.1f} at the end",
        flush=True,
    )
    goals = {
        f"chunk p99 < {KNEE_S:g} s": figures["p99_ms"] < 1000 * KNEE_S,
        "0 errors": not run.errors,
        "every chunk verified": verified == len(run.acknowledged) == n * args.seconds,
        f"/healthz p99 < {HEALTHZ_GOAL_MS} ms": figures["healthz_p99_ms"] < HEALTHZ_GOAL_MS,
    }
    figures["goals"] = goals
    print("    goals: " + ", ".join(f"{name} {'yes' if met else 'NO'}" for name, met in goals.items()), flush=True)
    for err in run.errors[:3]:
        print(f"    {err}")
    return figures


if __name__ == "__main__":
    main()
