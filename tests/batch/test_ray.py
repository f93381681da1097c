"""``fergi extract/score --executor ray``: the same files as the local executor, on Ray.

One local Ray cluster (2 CPUs, 127.0.0.1) serves the whole module; the executor uses
the Ray session already started in the process, as a library user's would. Its workers
import the fergi under test and keep their caches in the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fergi
from fergi.cli._main import main
from tests.helpers.videos import gray_clip


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    caches = tmp_path_factory.mktemp("ray-caches")
    env = {
        # The workers import the fergi under test, whatever is installed.
        "PYTHONPATH": os.pathsep.join(
            [str(Path(fergi.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
        # Weight fingerprints and Hugging Face look-ups never touch the user's caches.
        "FERGI_SCORERS_DIR": str(caches / "fergi-scorers"),
        "HF_HUB_CACHE": str(caches / "hf-hub"),
    }
    ray.init(
        num_cpus=2,
        address="local",
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        runtime_env={"env_vars": env},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def _files(out: Path) -> dict[str, bytes]:
    """Every features file and the meta file of an output folder, by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.name.endswith(("_features.csv", "_features.parquet")) or p.name == "features_meta.json"
    }


def _report(out: Path) -> pd.DataFrame:
    report = pd.read_csv(out / "extract_report.csv")
    report.index = report["video"].str.rsplit("/", n=1).str[-1]
    return report


@pytest.mark.slow
def test_ray_writes_the_local_files_and_reports_a_corrupt_video(
    ray_cluster, videos, tmp_path, capsys
):
    src = tmp_path / "in"
    shutil.copytree(videos, src)
    (src / "p1" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x17" * 3000)
    local, on_ray = tmp_path / "local", tmp_path / "ray"

    assert main(["extract", str(src), "--out", str(local)]) == 1
    capsys.readouterr()
    assert main(["extract", str(src), "--out", str(on_ray), "--executor", "ray"]) == 1
    printed = capsys.readouterr()
    # The corrupt video is reported; the batch went on.
    assert "3 extracted, 0 skipped (output exists), 1 failed" in printed.out
    assert "error:" in printed.err and "broken.mp4" in printed.err

    files = _files(on_ray)
    assert len(files) == 4  # three videos and features_meta.json
    assert files == _files(local)
    report, expected = _report(on_ray), _report(local)
    assert report.loc["broken.mp4", "status"] == "failed"
    assert "broken.mp4" in report.loc["broken.mp4", "error"]
    columns = ["status", "frames", "face_share", "neutral_reference"]
    pd.testing.assert_frame_equal(report[columns], expected[columns])
    assert (report["output"].str.replace(str(on_ray), "") ==
            expected["output"].str.replace(str(local), "")).all()
    assert not list(on_ray.rglob(".*.tmp"))


@pytest.mark.slow
def test_ray_resumes_after_an_interruption(ray_cluster, tmp_path, monkeypatch, capsys):
    from fergi.batch import _ray

    for i in range(4):
        gray_clip(tmp_path / "in" / f"clip_{i}.mp4", 3 + i)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["extract", str(tmp_path / "in"), "--out", str(local)]) == 0

    # `kill PID` (SIGTERM) when the second video's file is about to be written.
    real = _ray._publish_bytes
    written = []

    def publish(payload, path):
        if written:
            signal.raise_signal(signal.SIGTERM)
        real(payload, path)
        written.append(path.name)

    monkeypatch.setattr(_ray, "_publish_bytes", publish)
    capsys.readouterr()
    assert main(["extract", str(tmp_path / "in"), "--out", str(on_ray), "--executor", "ray"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(written) == 1
    stopped = _report(on_ray)
    assert list(stopped["status"]) == ["ok"]
    assert sorted(p.name for p in on_ray.glob("*_features.csv")) == written

    # The re-run skips the finished video and extracts the three others.
    monkeypatch.setattr(_ray, "_publish_bytes", real)
    first = on_ray / written[0]
    stamp = first.stat().st_mtime_ns
    assert main(["extract", str(tmp_path / "in"), "--out", str(on_ray), "--executor", "ray"]) == 0
    assert "3 extracted, 1 skipped (output exists), 0 failed" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp
    report = _report(on_ray)
    assert report.loc[written[0].replace("_features.csv", ".mp4"), "status"] == "skipped"
    assert (report["status"] == "skipped").sum() == 1 and (report["status"] == "ok").sum() == 3
    # The skipped video keeps its figures from the interrupted run.
    assert report["frames"].tolist() == [3, 4, 5, 6]
    assert _files(on_ray) == _files(local)

    # Parquet files come back byte-identical too.
    parquet = ["--format", "parquet"]
    assert main(["extract", str(tmp_path / "in"), "--out", str(local / "pq"), *parquet]) == 0
    assert main(["extract", str(tmp_path / "in"), "--out", str(on_ray / "pq"), *parquet,
                 "--executor", "ray"]) == 0
    files = _files(on_ray / "pq")
    assert len(files) == 5 and files == _files(local / "pq")


@pytest.fixture(scope="module")
def tiny_ir50(tmp_path_factory):
    """Random weights of a reduced IR-50 (the layout `fergi train-au --width` saves)."""
    import torch

    from fergi.au import build_ir50

    torch.manual_seed(0)
    model = build_ir50(width=8, layers=(1, 1, 1, 1))
    with torch.no_grad():
        model.fc.bias.copy_(torch.linspace(0, 3, 384))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ir50") / "tiny_ir50.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_ir50_actors_batch_faces_across_videos_and_give_the_local_files(
    ray_cluster, videos, tiny_ir50, tmp_path, capsys
):
    """No GPU here: the model actor runs on CPU, fed by two video tasks at once."""
    folder = videos / "p1" / "session_1"
    from fergi.face import save_synthetic_landmark_weights

    # The default (authors') preprocessing runs in the video tasks, the model in the actor.
    landmarks = save_synthetic_landmark_weights(tmp_path / "mfn.pth.tar", jitter=0.02)
    args = ["extract", str(folder), "--estimator", "ir50", "--checkpoint", str(tiny_ir50),
            "--landmarks", str(landmarks)]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    files = _files(tmp_path / "ray")
    assert len(files) == 3 and files == _files(tmp_path / "local")
    table = pd.read_csv(tmp_path / "ray" / "reaction_clip_1_features.csv")
    assert len(table) == 24 and (table["AU12"] != -1).all()
    assert table["AU12"].nunique() > 1  # the faces really went through the model

    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "gpu"), "--executor", "ray",
                 "--ray-gpus-per-actor", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ray-gpus-per-actor 1: the Ray cluster has 0 GPU(s)")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "gpu" / "reaction_clip_1_features.csv").exists()


@pytest.mark.slow
def test_the_face_actor_batches_the_faces_of_several_videos_together(ray_cluster, tiny_ir50):
    """Requests waiting while the model runs go through it together, each gets its rows."""
    import threading
    import time

    from fergi.batch import _jobs
    from fergi.batch._ray import _FaceActor

    actor = _FaceActor("ir50", str(tiny_ir50))  # the class itself, in this process
    assert actor.ready() == "cpu"
    sizes = []
    running = threading.Event()
    real = actor.model.predict

    def predict(faces):
        running.set()
        if not sizes:
            # Hold the first pass until two more videos are waiting for the model.
            deadline = time.monotonic() + 60
            while len(actor.waiting) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        sizes.append(len(faces))
        return real(faces)

    actor.model.predict = predict
    rng = np.random.default_rng(1)
    faces = [rng.random((n, 112, 112, 3), dtype=np.float32) for n in (10, 20, 30)]
    out: dict[int, np.ndarray] = {}

    def call(k):
        out[k] = actor.predict(faces[k])

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert running.wait(60)  # the model is busy with the first video's faces
    others = [threading.Thread(target=call, args=(k,)) for k in (1, 2)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(timeout=120)
    assert sizes == [10, 50]
    # Each video's rows are what a local run computes for it alone.
    local = _jobs.make_estimator("ir50", str(tiny_ir50), device="cpu")
    for k in range(3):
        np.testing.assert_array_equal(out[k], local.predict(faces[k]))


@pytest.mark.slow
def test_score_on_ray_actors_equals_local_scoring(ray_cluster, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from fergi.scorers._testing import make_scorer_weights

    monkeypatch.setenv("FERGI_SCORERS_DIR", str(tmp_path / "fergi-scorers"))
    weights = make_scorer_weights(tmp_path / "weights", layout="hf")
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(5):
        pixels = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "imgs" / f"{i}.png")
    pd.DataFrame({"image": [f"imgs/{i}.png" for i in range(5)],
                  "prompt": ["a red cat", "a dog", "a red cat", "the sea", "a house"]}).to_csv(
        tmp_path / "prompts.csv", index=False)
    common = ["score", str(tmp_path), "--prompts", str(tmp_path / "prompts.csv"),
              "--scorers", "clip,aesthetic,pickscore", "--batch-size", "2", "--no-cache"]
    for name in ("clip", "aesthetic", "pickscore"):
        common += ["--weights", f"{name}={weights[name]['weights']}"]

    assert main([*common, "--out", str(tmp_path / "local.csv")]) == 0
    # Two actors per scorer share the three batches of each.
    assert main([*common, "--out", str(tmp_path / "ray.csv"), "--executor", "ray",
                 "--ray-actors", "2"]) == 0
    assert "5 images: clip 5 scored + 0 cached" in capsys.readouterr().out
    local = (tmp_path / "local.csv").read_bytes()
    assert (tmp_path / "ray.csv").read_bytes() == local
    assert pd.read_csv(tmp_path / "ray.csv")["CLIP_score"].nunique() == 5
    # More CPU actors than the cluster's 2 CPUs would wait forever: refused at once.
    assert main([*common, "--out", str(tmp_path / "x.csv"), "--executor", "ray",
                 "--ray-actors", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ray-actors 3: more CPU scorer actors") and len(err.splitlines()) == 1

    # Through the library, in one Ray session: scores read from the cache, and a
    # corrupt image is one error line naming it, raised from inside an actor.
    from fergi import FergiError
    from fergi.batch import RayExecutor, score_folder
    from fergi.cli.score import parse_weights

    options = {"prompts": tmp_path / "prompts.csv", "weights": parse_weights([f"clip={weights['clip']['weights']}"]),
               "batch_size": 2, "cache": tmp_path / "cache.sqlite"}
    executor = RayExecutor()
    with executor.session():
        first = score_folder(tmp_path, ["clip"], out=tmp_path / "lib.csv", executor=executor,
                             **options)
        again = score_folder(tmp_path, ["clip"], out=tmp_path / "lib.csv", executor=executor,
                             **options)
        assert (first["scored"], again["scored"], again["cached"]) == ({"clip": 5}, {"clip": 0},
                                                                      {"clip": 5})
        (tmp_path / "imgs" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        with pytest.raises(FergiError) as error:
            score_folder(tmp_path, ["clip"], out=tmp_path / "bad.csv", executor=executor,
                         **{**options, "cache": False})
    assert "3.png" in str(error.value) and len(str(error.value).splitlines()) == 1
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "lib.csv")["CLIP_score"],
                                  pd.read_csv(tmp_path / "local.csv")["CLIP_score"])


def test_missing_ray_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    video = gray_clip(tmp_path / "clip.mp4", 3)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["extract", str(video), "--out", str(tmp_path / "o"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'fergi[ray]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "clip_features.csv").exists()


def test_ray_options_are_checked(tmp_path, capsys):
    video = gray_clip(tmp_path / "clip.mp4", 3)
    base = ["extract", str(video), "--out", str(tmp_path / "o")]
    for extra, message in (
        (["--executor", "ray", "--ray-address", "head-node"], "--ray-address 'head-node'"),
        (["--executor", "ray", "--ray-actors", "0"], "--ray-actors must be at least 1"),
        (["--executor", "ray", "--ray-gpus-per-actor", "-1"], "--ray-gpus-per-actor must be"),
        (["--ray-address", "auto"], "--ray-address is only used with --executor ray"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err
