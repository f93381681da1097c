"""Study server figures: chunk upload throughput and latency under concurrent participants,
and processing time of an uploaded session.

    python benchmarks/bench_study.py [--participants 8] [--chunks 60] [--chunk-kb 250]

A MediaRecorder at 2.5 Mbit/s with 1 s chunks sends ~310 kB per second per participant,
so the upload figure says how many participants one server process carries.
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


def start_server(app):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def participant(base: str, pid: str, n_chunks: int, chunk: bytes, latencies: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/api/sessions", json={"participant_id": pid}).json()
        sid, headers = r["session_id"], {"X-Session-Token": r["token"]}
        client.post(f"/api/sessions/{sid}/consent", json={"agree": True, "consent_version": "1"}, headers=headers)
        # Skip the UI's prompt/webcam steps: mark the webcam as checked in the database directly.
        BENCH_READY(sid)
        seg = client.post(f"/api/sessions/{sid}/recording/segments", json={"mime_type": "video/webm"}, headers=headers).json()["segment"]
        for seq in range(n_chunks):
            body = (b"\x1a\x45\xdf\xa3" if seq == 0 else b"") + chunk
            t = time.perf_counter()
            response = client.put(f"/api/sessions/{sid}/recording/{seg}/chunks/{seq}", content=body, headers={**headers, "Content-Type": "video/webm"})
            latencies.append(time.perf_counter() - t)
            response.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--chunk-kb", type=int, default=250)
    parser.add_argument("--skip-processing", action="store_true")
    parser.add_argument("--data", help="unused (the study benchmark makes its own data); accepted for `make bench`")
    args = parser.parse_args()

    from fergi.study import StudySettings, create_app
    from fergi.study._db import StudySession, utcnow

    tmp = Path(tempfile.mkdtemp(prefix="fergi-bench-"))
    settings = StudySettings(data_dir=tmp / "study", worker=False, rate_limit_per_minute=100_000)
    app = create_app(settings)

    def ready(sid: int) -> None:
        with app.state.sessionmaker() as db:
            sess = db.get(StudySession, sid)
            sess.prompt, sess.webcam_ok_at = "bench", utcnow()
            db.commit()

    global BENCH_READY
    BENCH_READY = ready
    server, base = start_server(app)
    chunk = bytes(args.chunk_kb * 1024)
    latencies: list[float] = []
    threads = [
        threading.Thread(target=participant, args=(base, f"p{i:03d}", args.chunks, chunk, latencies))
        for i in range(args.participants)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total_mb = len(latencies) * len(chunk) / 1e6
    lat = sorted(latencies)
    print(f"uploads: {args.participants} participants x {args.chunks} chunks of {args.chunk_kb} kB (SQLite WAL, one process)")
    print(f"  {len(latencies) / wall:.0f} chunks/s, {total_mb / wall:.1f} MB/s")
    print(f"  chunk PUT latency p50 {1000 * statistics.median(lat):.1f} ms, p95 {1000 * lat[int(0.95 * len(lat))]:.1f} ms")
    print(f"  = about {total_mb / wall / 0.31:.0f} participants recording at 2.5 Mbit/s in real time")
    server.should_exit = True

    if args.skip_processing:
        return
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


BENCH_READY = None

if __name__ == "__main__":
    main()
