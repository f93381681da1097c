"""Study processing of a realistic synthetic session (5 images, 5 s + 5 s clips, 640x480),
before and after real-time processing.

Usage: python benchmarks/bench_studylib.py [--quick]

Before: the whole recording after the ranking with ``process_session_media`` (standardise
to a 30 fps file, cut clip files, analyse them). After: the study server's real-time
worker, driven through the HTTP API as a browser does (about one chunk a second, each
image's events before the chunks that hold it), each image analysed while its survey is
answered; only the labels are left for the ranking. Prints, for both: the time from the
ranking to stored labels, the CPU seconds per session, and the sessions per hour one
worker process sustains (3600 / its busy seconds per session, jobs back to back).

``--quick`` (what the test suite runs): 2 images (a smile, a frown) with 1 s + 1 s clips.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

STAGES = ("standardize", "clips", "features", "activations", "labels")
# image index: (smile, frown) strengths of its reaction.
IMAGES = {1: (1, 0), 2: (0, 1), 3: (0, 0), 4: (0.6, 0), 5: (0, 0.6)}
FULL = {"images": 5, "clip_s": 5.0, "gap_s": 3.0}
QUICK = {"images": 2, "clip_s": 1.0, "gap_s": 0.5}
FORM = {
    "animate_objects": [{"name": "cat", "quantity": 1, "activity": "sleep", "characteristics": "furry"}],
    "inanimate_objects": [],
    "interactional_relations": [],
    "positional_relations": [],
    "location": "a garden",
    "style": "watercolor",
    "keywords": "",
}
ANSWER = {"overall_rating": 5, "alignment_rating": 5, "fidelity_rating": 5}


def make_recording(path: Path, images: int, clip_s: float, gap_s: float):
    """A VFR webm of ``images`` baseline + reaction pairs (as a browser records) and its events."""
    import numpy as np
    from skimage import data

    from fergi.face._synthetic import reaction_frames
    from fergi.video import write_video

    face = data.astronaut()
    frames, events = [], []
    for image in range(1, images + 1):
        smile, frown = IMAGES[image]
        t0 = len(frames) / 30
        frames += reaction_frames(face, neutral_s=clip_s, expression_s=clip_s, smile=smile, frown=frown)
        frames += reaction_frames(face, neutral_s=gap_s, expression_s=0)
        events += [
            dict(image_index=image, kind="baseline_start", video_time=t0 + 0.01),
            dict(image_index=image, kind="image_shown", video_time=t0 + clip_s + 0.01),
            dict(image_index=image, kind="image_hidden", video_time=t0 + 2 * clip_s + 0.01),
        ]
    # Drop about 10 % of the frames and jitter the rest, like MediaRecorder under load.
    rng = np.random.default_rng(0)
    keep = [i for i in range(len(frames)) if i == 0 or rng.random() > 0.1]
    ts = np.array([0.0] + [i / 30 + rng.uniform(0, 0.004) for i in keep[1:]])
    write_video(path, (frames[i] for i in keep), timestamps=ts)
    return ts, events


def run_before(root: Path, recording: Path, events, clip_s: float) -> dict:
    """The whole recording after the ranking (``process_session_media``)."""
    from fergi.preference import AUcombValence
    from fergi.study.processing import process_session_media

    marks = {}

    def on_stage(name, status):
        marks[(name, status)] = time.perf_counter()

    wall, cpu = time.perf_counter(), time.process_time()
    result = process_session_media(
        recording,
        events,
        root / "work",
        model=AUcombValence(k=1.0, w_au4=0.5, threshold=0.1),
        on_stage=on_stage,
        baseline_s=clip_s,
        reaction_s=clip_s,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stages = {name: marks[(name, "done")] - marks[(name, "running")] for name in STAGES}
    return {"stages_s": stages, "total_s": wall, "cpu_s": cpu, "labels": result.labels}


def one_second_chunks(path: Path) -> list[bytes]:
    """The recording cut into byte pieces of about one second each (MediaRecorder's timeslice)."""
    import av

    cuts, next_t = [], 1.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is None or packet.pos is None or packet.pos <= 0:
                continue
            if float(packet.pts * stream.time_base) >= next_t:
                cuts.append(packet.pos)
                next_t += 1.0
    payload = path.read_bytes()
    bounds = [0, *cuts, len(payload)]
    return [payload[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def run_realtime(root: Path, recording: Path, events, images: int, clip_s: float) -> dict:
    """One session through the study's HTTP API, the worker run after every request."""
    from fastapi.testclient import TestClient
    from PIL import Image
    from skimage import data

    from fergi.study import StudySettings, create_app
    from fergi.study.store import Label

    # the server's own configuration: the shipped (scale-free) annotation model
    settings = StudySettings(
        data_dir=root / "study", admin_token="bench", worker=False, seed=0,
        n_images=images, baseline_s=clip_s, present_s=clip_s,
    )
    app = create_app(settings)
    worker = app.state.worker
    chunks = one_second_chunks(recording)
    busy = {"wall_s": 0.0, "cpu_s": 0.0, "jobs": 0}

    def work(kind: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        busy["jobs"] += worker.run_pending(kind)
        busy["wall_s"] += time.perf_counter() - wall
        busy["cpu_s"] += time.process_time() - cpu

    with TestClient(app) as client:
        body = client.post("/api/sessions", json={"participant_id": "001"}).json()
        sid, token = body["session_id"], {"X-Session-Token": body["token"]}

        def call(method, suffix, headers=None, **kwargs):
            response = client.request(
                method, f"/api/sessions/{sid}{suffix}", headers={**token, **(headers or {})}, **kwargs
            )
            if response.status_code >= 300:
                raise RuntimeError(f"{method} {suffix}: {response.status_code} {response.text}")
            return response.json()

        def upload(seq: int) -> None:
            call("PUT", f"/recording/{seg}/chunks/{seq}", content=chunks[seq],
                 headers={"Content-Type": "video/webm"})

        call("POST", "/consent", json={"agree": True, "consent_version": "1", "share_video": False})
        call("PUT", "/prompt", json={"prompt": call("POST", "/prompt/generate", json={"form": FORM})["prompt"]})
        worker.run_pending("generate")
        jpeg = io.BytesIO()
        Image.fromarray(data.astronaut()).save(jpeg, format="JPEG")
        call("POST", "/webcam-check", content=jpeg.getvalue(), headers={"Content-Type": "image/jpeg"})
        seg = call("POST", "/recording/segments", json={"mime_type": "video/webm;codecs=vp9"})["segment"]
        sent, analysed_after = 0, {}
        for image in range(1, images + 1):
            for ev in (e for e in events if e["image_index"] == image):
                call("POST", "/events", json={"segment": seg, **ev})
            call("PUT", f"/images/{image}/answer", json=ANSWER)
            # the survey: chunks keep arriving and the worker runs what they make ready
            while True:
                work("clips")
                clips = client.get(f"/api/admin/sessions/{sid}", headers={"Authorization": "Bearer bench"})
                if sum(c["image_index"] == image for c in clips.json()["clips"]) == 2 or sent == len(chunks):
                    break
                upload(sent)
                sent += 1
            analysed_after[image] = sent
        while sent < len(chunks):
            upload(sent)
            sent += 1
        call("POST", f"/recording/{seg}/complete", json={"n_chunks": sent})
        work("clips")
        t = time.perf_counter()
        call("PUT", "/ranking", json={"order": list(range(1, images + 1))})
        work("process")
        to_labels = time.perf_counter() - t
        with app.state.sessionmaker() as db:
            labels = db.query(Label).filter(Label.session_id == sid).count()
    return {**busy, "ranking_to_labels_s": to_labels, "chunks": len(chunks),
            "analysed_after_chunk": analysed_after, "labels": labels}


def main(argv=None) -> dict:
    """Print the figures before and after real-time processing; return them."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} (for tests)")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL

    with tempfile.TemporaryDirectory(prefix="fergi-bench-") as tmp:
        root = Path(tmp)
        ts, events = make_recording(root / "rec.webm", **size)
        megabytes = (root / "rec.webm").stat().st_size / 1e6
        print(f"recording: {ts[-1]:.1f} s, {len(ts)} VFR frames, {megabytes:.1f} MB, {size['images']} images")
        before = run_before(root, root / "rec.webm", events, size["clip_s"])
        after = run_realtime(root, root / "rec.webm", events, size["images"], size["clip_s"])
    print("before: the whole recording after the ranking (process_session_media)")
    for name, seconds in before["stages_s"].items():
        print(f"  {name:12s} {seconds:6.1f} s")
    print(f"  total        {before['total_s']:6.1f} s")
    print(before["labels"].to_string())
    print(f"after: real time, {after['jobs']} worker jobs over {after['chunks']} uploaded chunks; "
          f"image i analysed after chunk {after['analysed_after_chunk']}")
    per_hour_before = 3600 / before["total_s"]
    per_hour_after = 3600 / after["wall_s"]
    rows = [
        ("ranking to stored labels", f"{before['total_s']:.2f} s", f"{after['ranking_to_labels_s']:.2f} s"),
        ("CPU seconds per session", f"{before['cpu_s']:.1f} s", f"{after['cpu_s']:.1f} s"),
        ("worker busy per session", f"{before['total_s']:.1f} s", f"{after['wall_s']:.1f} s"),
        ("sessions per hour, one worker", f"{per_hour_before:.0f}", f"{per_hour_after:.0f}"),
    ]
    print(f"{'':32s} {'before':>10s} {'after':>10s}")
    for name, a, b in rows:
        print(f"{name:32s} {a:>10s} {b:>10s}")
    return {
        "recording_s": float(ts[-1]),
        "frames": len(ts),
        "megabytes": megabytes,
        "stages_s": before["stages_s"],
        "total_s": before["total_s"],
        "labels": before["labels"],
        "before": {"ranking_to_labels_s": before["total_s"], "cpu_s": before["cpu_s"],
                   "sessions_per_hour": per_hour_before},
        "after": {"ranking_to_labels_s": after["ranking_to_labels_s"], "cpu_s": after["cpu_s"],
                  "worker_s": after["wall_s"], "sessions_per_hour": per_hour_after,
                  "jobs": after["jobs"], "chunks": after["chunks"],
                  "analysed_after_chunk": after["analysed_after_chunk"], "labels": after["labels"]},
    }


if __name__ == "__main__":
    main()
