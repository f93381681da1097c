"""Study server figures: chunk upload throughput and latency under concurrent participants,
and processing time of an uploaded session.

    python benchmarks/bench_study.py [--participants 8] [--chunks 60] [--chunk-kb 250] [--quick]

A MediaRecorder at 2.5 Mbit/s with 1 s chunks sends ~310 kB per second per participant,
so the upload figure says how many participants one server process carries.
``--quick`` (what the test suite runs): 2 participants x 5 chunks of 64 kB, then the same
processed session. The server listens on 127.0.0.1 only and is stopped before the
processing figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


QUICK = {"participants": 2, "chunks": 5, "chunk_kb": 64}


def start_server(app):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit(f"benchmark server did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def stop_server(server, thread) -> None:
    server.should_exit = True
    thread.join(timeout=10)


def participant(base: str, pid: str, n_chunks: int, chunk: bytes, latencies: list[float], ready) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/api/sessions", json={"participant_id": pid}).json()
        sid, headers = r["session_id"], {"X-Session-Token": r["token"]}
        client.post(f"/api/sessions/{sid}/consent", json={"agree": True, "consent_version": "1"}, headers=headers)
        # Skip the UI's prompt/webcam steps: mark the webcam as checked in the database directly.
        ready(sid)
        seg = client.post(f"/api/sessions/{sid}/recording/segments", json={"mime_type": "video/webm"}, headers=headers).json()["segment"]
        for seq in range(n_chunks):
            body = (b"\x1a\x45\xdf\xa3" if seq == 0 else b"") + chunk
            t = time.perf_counter()
            response = client.put(f"/api/sessions/{sid}/recording/{seg}/chunks/{seq}", content=body, headers={**headers, "Content-Type": "video/webm"})
            latencies.append(time.perf_counter() - t)
            response.raise_for_status()


def main(argv=None) -> dict:
    """Print the figures and return them (upload throughput and latency, processing time)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--chunk-kb", type=int, default=250)
    parser.add_argument("--skip-processing", action="store_true")
    parser.add_argument("--data", help="unused (the study benchmark makes its own data); accepted for `make bench`")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} (for tests)")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    with tempfile.TemporaryDirectory(prefix="fergi-bench-") as tmp:
        return _bench(args, Path(tmp))


def _bench(args, tmp: Path) -> dict:
    from fergi.study import StudySettings, create_app
    from fergi.study._db import StudySession, utcnow

    settings = StudySettings(data_dir=tmp / "study", worker=False, rate_limit_per_minute=100_000)
    app = create_app(settings)

    def ready(sid: int) -> None:
        with app.state.sessionmaker() as db:
            sess = db.get(StudySession, sid)
            sess.prompt, sess.webcam_ok_at = "bench", utcnow()
            db.commit()

    server, server_thread, base = start_server(app)
    chunk = bytes(args.chunk_kb * 1024)
    latencies: list[float] = []
    errors: list[BaseException] = []

    def upload(pid: str) -> None:
        try:
            participant(base, pid, args.chunks, chunk, latencies, ready)
        except BaseException as exc:  # reported after the other participants finish
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(f"p{i:03d}",)) for i in range(args.participants)]
    try:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        # Its lifespan exit disposes of the database engine.
        stop_server(server, server_thread)
    if errors:
        raise SystemExit(f"benchmark upload failed: {errors[0]!r}")
    total_mb = len(latencies) * len(chunk) / 1e6
    lat = sorted(latencies)
    print(f"uploads: {args.participants} participants x {args.chunks} chunks of {args.chunk_kb} kB (SQLite WAL, one process)")
    print(f"  {len(latencies) / wall:.0f} chunks/s, {total_mb / wall:.1f} MB/s")
    print(f"  chunk PUT latency p50 {1000 * statistics.median(lat):.1f} ms, p95 {1000 * lat[int(0.95 * len(lat))]:.1f} ms")
    print(f"  = about {total_mb / wall / 0.31:.0f} participants recording at 2.5 Mbit/s in real time")
    figures = {
        "chunks": len(latencies),
        "chunks_per_s": len(latencies) / wall,
        "mb_per_s": total_mb / wall,
        "latency_p50_ms": 1000 * statistics.median(lat),
        "latency_p95_ms": 1000 * lat[int(0.95 * len(lat))],
        "participants_real_time": total_mb / wall / 0.31,
    }

    if args.skip_processing:
        return figures
    from fastapi.testclient import TestClient
    from skimage import data

    from fergi.face import write_reaction_video
    from test_study_api import make_settings
    from test_study_processing import run_session

    recording = write_reaction_video(tmp / "rec.webm", data.astronaut(), neutral_s=2.5, expression_s=2.5, smile=1.0)
    app = create_app(make_settings(tmp / "proc", n_images=2, baseline_s=1.0, present_s=1.0))
    with TestClient(app) as client:
        t = time.perf_counter()
        run_session(client, app, recording)
        elapsed = time.perf_counter() - t
    print(
        "session through the API incl. processing (5.0 s 640x480 VP9 recording, 2 images, "
        f"4 clips of 1 s, geometry estimator): {elapsed:.1f} s wall"
    )
    figures["processing_s"] = elapsed
    return figures


if __name__ == "__main__":
    main()
