"""Study processing past one machine: media on object storage, encryption at rest, and
jobs run by `fergi worker` processes through PostgreSQL (procrastinate)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import time
from pathlib import Path, PurePath

import pytest
from fastapi.testclient import TestClient

from fergi import FergiError
from fergi.study import create_app
from tests.helpers import study_cluster as cluster
from tests.helpers.paths import BENCHMARKS, REPO_ROOT
from tests.helpers.study import ADMIN, Participant, make_settings

MEDIA_SUFFIXES = {".webm", ".mp4", ".png", ".csv", ".json", ".part"}


@pytest.fixture
def recording(reaction_webm):
    return reaction_webm


def _local_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --------------------------------------------------------------------------- media store


def test_object_store_keeps_the_local_layout_and_commits_chunks(s3):
    from fergi.study.store import RemotePath, open_store

    store = open_store(f"s3://{s3.bucket}/study")
    assert store.is_remote and str(store.root) == f"s3://{s3.bucket}/study"
    fs = s3.fs()
    data = b"\x1a\x45\xdf\xa3" + os.urandom(5000)
    digest = hashlib.sha256(data).hexdigest()
    staged = store.stage_chunk(7, 0, 0, data, digest)
    final = store.chunk_path(7, 0, 0)
    assert isinstance(final, RemotePath)
    assert store.missing_chunks(7, 0, [0]) == ["chunk_000000.webm"]  # not committed yet
    store.commit_chunk(staged, 7, 0, 0)
    store.commit_chunk(staged, 7, 0, 0)  # a retried request: nothing left to do
    assert fs.cat_file(f"{s3.bucket}/study/sessions/000007/segments/000/chunk_000000.webm") == data
    assert not staged.exists() and store.missing_chunks(7, 0, [0]) == []
    assert store.relative(final) == "sessions/000007/segments/000/chunk_000000.webm"
    assert store.resolve(store.relative(final)) == final
    with pytest.raises(ValueError):
        store.resolve("../other-bucket/x")

    # a segment is read back as one seekable stream, chunk by chunk
    more = os.urandom(3000)
    store.commit_chunk(store.stage_chunk(7, 0, 1, more, hashlib.sha256(more).hexdigest()), 7, 0, 1)

    class Row:
        def __init__(self, seq, size):
            self.seq, self.size = seq, size

    stream = store.segment_stream(7, 0, [Row(0, len(data)), Row(1, len(more))])
    stream.seek(len(data) - 10)
    assert stream.read(20) == data[-10:] + more[:10]
    stream.seek(0)
    assert stream.read() == data + more

    # outputs written locally are uploaded, and nothing stays on local disk
    target = store.features_dir(7) / "reaction_clip_1_features.csv"
    with store.output(target) as local:
        local.write_text("a,b\n1,2\n")
        scratch = local.parent
    assert target.read_bytes() == b"a,b\n1,2\n" and not scratch.exists()
    assert store.has_files(store.session_dir(7) / "segments")
    store.remove_tree(store.session_dir(7) / "segments")
    assert not store.has_files(store.session_dir(7) / "segments") and target.is_file()


def test_unreachable_bucket_is_one_line(s3):
    from fergi.study.store import open_store

    with pytest.raises(FergiError, match="the bucket does not exist"):
        open_store("s3://no-such-bucket/study")


def test_local_chunks_keep_their_layout(tmp_path):
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        from tests.helpers.study import WEBM_HEAD, ready_participant

        p = ready_participant(client, app)
        seg = p.start_segment()
        body = WEBM_HEAD + b"x" * 100
        assert p.chunk(seg, 0, body).status_code == 200
        assert p.chunk(seg, 0, body).json()["duplicate"] is True
        folder = app.state.store.segment_dir(p.id, seg)
        assert sorted(f.name for f in folder.iterdir()) == ["chunk_000000.webm"]
        assert (folder / "chunk_000000.webm").read_bytes() == body
        # The server stopped between the chunk's database commit and its rename: the
        # client's retry (it never got an answer) finishes the commit.
        staged = app.state.store.staged_chunk_path(p.id, seg, 0, hashlib.sha256(body).hexdigest())
        (folder / "chunk_000000.webm").rename(staged)
        assert p.chunk(seg, 0, body).json()["duplicate"] is True
        assert sorted(f.name for f in folder.iterdir()) == ["chunk_000000.webm"]
        assert (folder / "chunk_000000.webm").read_bytes() == body


def test_object_store_without_its_package_names_the_extra(monkeypatch):
    import fsspec.core

    from fergi.study.store import open_store

    def missing(url, **options):
        raise ImportError("Install s3fs to access S3", name="s3fs")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(FergiError, match=r"s3://b/p: needs the s3fs package \(pip install 'fergi\[distributed\]'\)"):
        open_store("s3://b/p")


def test_missing_cryptography_names_the_extra(monkeypatch):
    from fergi.study.store import MediaStore

    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    with pytest.raises(FergiError, match=r"pip install 'fergi\[encryption\]'"):
        MediaStore(Path("."), key="x")


def test_bad_media_key_is_one_line(tmp_path):
    pytest.importorskip("cryptography")
    with pytest.raises(FergiError, match="not a Fernet key"):
        create_app(make_settings(tmp_path, media_key="not-a-key"))


@pytest.mark.slow
def test_raw_video_is_encrypted_at_rest_and_still_processed(tmp_path, recording):
    fernet = pytest.importorskip("cryptography.fernet")
    from tests.helpers.study import run_session

    key = fernet.Fernet.generate_key().decode()
    settings = make_settings(tmp_path, n_images=2, baseline_s=1.0, present_s=1.0, media_key=key)
    app = create_app(settings)
    with TestClient(app) as client:
        p, seg = run_session(client, app, recording)
        detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
        job = [j for j in detail["jobs"] if j["kind"] == "process"][0]
        assert job["status"] == "done", job
        assert len(detail["labels"]) == 1
        stored = app.state.store.chunk_path(p.id, seg, 0).read_bytes()
        sent = recording.read_bytes()[:48_000]
        assert not stored.startswith(b"\x1a\x45\xdf\xa3") and sent not in stored
        assert fernet.Fernet(key.encode()).decrypt(stored) == sent
        # the admin's clip playback decrypts too
        assert client.get(f"/api/admin/sessions/{p.id}/clips/1/reaction", headers=ADMIN).status_code == 200

    # The same media with another key: the server does not start (the media key check),
    # and a chunk read with it fails with a clear error; nothing is lost.
    wrong = fernet.Fernet.generate_key().decode()
    from pydantic import SecretStr

    from fergi import FergiError
    from fergi.study.store import MediaStore

    with pytest.raises(FergiError, match="not the key the media were encrypted with"):
        create_app(settings.model_copy(update={"media_key": SecretStr(wrong)}))
    store = MediaStore(settings.resolved_media_dir, key=wrong)
    with pytest.raises(FergiError, match="wrong FERGI_MEDIA_KEY"):
        store.read_chunk(store.chunk_path(p.id, seg, 0))
    assert app.state.store.chunk_path(p.id, seg, 0).read_bytes() == stored


# --------------------------------------------------------------------------- the queue


def test_postgres_server_only_enqueues_and_a_job_runs_once(tmp_path, postgres_url):
    """The server defers one procrastinate job per queued row (never two waiting), runs
    nothing itself, and the job function claims a row once; a row left running by a
    dead worker is run again, and failed once it was interrupted too often."""
    pytest.importorskip("procrastinate")
    import psycopg
    from sqlalchemy import select

    from fergi.study.jobs import Worker, libpq_url
    from fergi.study.store import Job

    db_url = cluster.fresh_database(postgres_url)
    settings = make_settings(tmp_path, db_url=db_url, worker=True, max_job_attempts=2, queue="procrastinate")
    app = create_app(settings)
    with TestClient(app) as client:
        assert app.state.worker.dispatcher is not None and not app.state.worker._threads
        p = Participant(client)
        p.consent()
        p.write_prompt()
        app.state.worker.wake("generate")  # again: already waiting, nothing new
        with psycopg.connect(libpq_url(db_url)) as conn:
            waiting = conn.execute(
                "SELECT lock, queueing_lock, args FROM procrastinate_jobs WHERE status = 'todo'").fetchall()
        with app.state.sessionmaker() as db:
            job = db.scalars(select(Job).where(Job.session_id == p.id, Job.kind == "generate")).one()
            job_id = job.id
            assert job.status == "queued"  # nothing runs in the server
        assert waiting == [(f"fergi:session:{p.id}", f"fergi-job:{job_id}", {"job_id": job_id})]

        # what `fergi worker` runs for that procrastinate job
        worker = Worker(app.state.sessionmaker, settings, app.state.store)
        assert worker.run_job(job_id) is True
        assert worker.run_job(job_id) is False  # a duplicate delivery does nothing
        with app.state.sessionmaker() as db:
            job = db.get(Job, job_id)
            assert (job.status, job.attempts) == ("done", 1)
            # a worker died while running it: run again once, then failed
            job.status = "running"
            db.commit()
        assert worker.run_job(job_id) is True
        with app.state.sessionmaker() as db:
            job = db.get(Job, job_id)
            assert (job.status, job.attempts) == ("done", 2)
            job.status = "running"
            db.commit()
        assert worker.run_job(job_id) is False
        with app.state.sessionmaker() as db:
            job = db.get(Job, job_id)
            assert job.status == "failed" and "interrupted too often" in job.error


def test_schema_is_created_once_by_processes_starting_together(postgres_url):
    """Server and workers start at once: each creates what is missing, none fails."""
    pytest.importorskip("procrastinate")
    import subprocess

    db_url = cluster.fresh_database(postgres_url)
    code = "import sys; from fergi.study.jobs import prepare_database; prepare_database(sys.argv[1]).dispose()"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url], env=env, stderr=subprocess.PIPE)
             for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    import psycopg

    from fergi.study.jobs import libpq_url

    with psycopg.connect(libpq_url(db_url)) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"jobs", "sessions", "procrastinate_jobs", "procrastinate_workers"} <= tables


def test_worker_refuses_sqlite_with_one_line(tmp_path, capsys):
    from fergi.cli._main import main

    assert main(["worker", "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}", "--media", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --db sqlite:") and "PostgreSQL" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- the distributed study


def _started(text: str) -> list[tuple[int, str, int]]:
    return [(int(j), k, int(s)) for j, k, s in re.findall(r"job (\d+) \((\w+), session (\d+)\) started", text)]


def _finished(text: str, job_id: int) -> bool:
    return re.search(rf"job {job_id} \(\w+, session \d+\) (done|failed)", text) is not None


@pytest.mark.slow
def test_sessions_survive_a_killed_worker_with_media_on_s3(tmp_path, postgres_url, s3, recording):
    import httpx

    db_url = cluster.fresh_database(postgres_url)
    study = cluster.StudyCluster(tmp_path / "cluster", db_url, f"s3://{s3.bucket}/study", extra_env=s3.env)
    data = recording.read_bytes()
    fs = s3.fs()
    try:
        study.start_server()
        workers = [study.start_worker(f"worker{i}", "--heartbeat-s", "1", "--stalled-s", "8") for i in (1, 2)]
        study.wait_workers(2)
        client = httpx.Client(base_url=study.base_url, timeout=60)
        participants = [cluster.HttpParticipant(client, f"{i:03d}") for i in range(1, 7)]
        for p in participants:
            p.start()
        for p in participants:
            p.record(data)
        for p in participants:
            p.rank()

        # SIGKILL a worker in the middle of a processing job: frozen first (SIGSTOP), so
        # that the job is known to be unfinished when the worker dies.
        killed = None
        deadline = time.monotonic() + 120
        while killed is None:
            assert time.monotonic() < deadline, "no worker was seen running a processing job"
            for proc in workers:
                running = [j for j in _started(proc.text()) if j[1] == "process" and not _finished(proc.text(), j[0])]
                if not running:
                    continue
                os.kill(proc.popen.pid, signal.SIGSTOP)
                job_id = running[0][0]
                row = next(r for r in cluster.job_rows(db_url) if r["id"] == job_id)
                if row["status"] == "running" and not _finished(proc.text(), job_id):
                    proc.stopped = True
                    os.kill(proc.popen.pid, signal.SIGKILL)
                    proc.popen.wait(10)
                    killed = (proc, job_id)
                    break
                os.kill(proc.popen.pid, signal.SIGCONT)
            time.sleep(0.05)
        victim, killed_job = killed
        survivor = next(w for w in workers if w is not victim)

        def all_processed():
            rows = [r for r in cluster.job_rows(db_url) if r["kind"] == "process"]
            return len(rows) == 6 and all(r["status"] in ("done", "failed") for r in rows) and rows

        rows = cluster.wait_for(all_processed, 150, "all sessions to be processed")
        assert all(r["status"] == "done" for r in rows), rows
        # exactly once to completion: one "done" per processing job over all workers' logs
        logs = victim.text() + survivor.text()
        for r in rows:
            done = re.findall(rf"job {r['id']} \(process, session \d+\) done", logs)
            assert len(done) == 1, (r, done)
        again = next(r for r in rows if r["id"] == killed_job)
        assert again["attempts"] == 2, again  # its first run died with the worker
        assert re.search(rf"job {killed_job} \(process, session \d+\) done", survivor.text())
        assert not any(r["status"] == "running" for r in cluster.job_rows(db_url))

        for p in participants:
            detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
            assert len(detail["labels"]) == 1, detail["labels"]
            assert sorted((c["image_index"], c["clip"]) for c in detail["clips"]) == [
                (1, "baseline"), (1, "reaction"), (2, "baseline"), (2, "reaction")]
            # no chunk lost: every object is the bytes sent
            prefix = f"{s3.bucket}/study/sessions/{p.id:06d}"
            stored = {PurePath(name).name: name for name in fs.find(f"{prefix}/segments/000")}
            assert sorted(stored) == [f"chunk_{seq:06d}.webm" for seq in sorted(p.sent)]
            for seq, digest in p.sent.items():
                assert hashlib.sha256(fs.cat_file(stored[f"chunk_{seq:06d}.webm"])).hexdigest() == digest
            names = {PurePath(n).name for n in fs.find(prefix)}
            assert {"image_1.png", "image_2.png", "features_meta.json", "reaction_clip_2_features.csv"} <= names
            # media served from the bucket
            image = client.get(f"/api/admin/sessions/{p.id}/images/1", headers=ADMIN)
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        # a clip video is encoded on demand in scratch space and kept in the bucket
        video = client.get(f"/api/admin/sessions/{participants[0].id}/clips/1/reaction", headers=ADMIN)
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        assert fs.isfile(f"{s3.bucket}/study/sessions/{participants[0].id:06d}/clips/reaction_clip_1.mp4")
        # and the study exports straight from the bucket
        from fergi.study import export_study

        summary = export_study(db_url, f"s3://{s3.bucket}/study", tmp_path / "export", include_raw=False)
        assert summary["sessions"] == 6
        assert len(list((tmp_path / "export" / "data").rglob("reaction_clip_*_features.csv"))) == 12
    finally:
        study.stop()
    # all media in the bucket, none on local disk
    for proc in study.procs:
        media = [f for f in _local_files(study.root / proc.name) + _local_files(proc.tmp)
                 if f.suffix in MEDIA_SUFFIXES]
        assert media == [], (proc.name, media)


@pytest.mark.slow
def test_scale_figures_quick():
    sys.path.insert(0, str(BENCHMARKS))
    from _scale_study import session_processing_figures

    figures = session_processing_figures(quick=True)
    assert figures["workers"] == [1, 2]
    assert all(v > 0 for v in figures["sessions_per_min"])
    assert figures["ratio"][0] == 1.0 and figures["ratio"][1] > 0


def test_serve_hands_jobs_to_workers_only_with_postgres(tmp_path, monkeypatch):
    from fergi.cli._main import build_parser
    from fergi.cli.serve import settings_from_args

    monkeypatch.setenv("FERGI_ADMIN_TOKEN", "x")
    parse = build_parser().parse_args
    base = ["serve", "--data-dir", str(tmp_path)]
    assert settings_from_args(parse(base)).queue == "threads"
    pg = [*base, "--db", "postgresql+psycopg://fergi@db.invalid/fergi"]
    assert settings_from_args(parse(pg)).queue == "procrastinate"
    assert settings_from_args(parse([*pg, "--no-worker"])).queue == "threads"
    assert settings_from_args(parse([*pg, "--queue", "threads"])).queue == "threads"
    s3 = settings_from_args(parse([*base, "--media", "s3://bucket/prefix"]))
    assert s3.media_url == "s3://bucket/prefix" and s3.media_location == "s3://bucket/prefix"
