"""``fergi extract``: batch, resume, report, bad videos, workers, formats."""

from __future__ import annotations

import pandas as pd
import pytest

from fergi.cli._main import main
from fergi.datasets import FRAME_COLUMNS
from fergi.features import compute_activation_values
from tests.helpers.videos import gray_clip


def test_batch_resume_and_report(videos, tmp_path, capsys):
    src = tmp_path / "in"
    import shutil

    shutil.copytree(videos, src)
    (src / "p1" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x17" * 3000)
    out = tmp_path / "out"

    assert main(["extract", str(src), "--out", str(out)]) == 1
    printed = capsys.readouterr()
    assert "broken.mp4" in printed.err and "3 extracted, 0 skipped" in printed.out
    first = out / "p1" / "session_1" / "reaction_clip_1_features.csv"
    assert first.is_file() and (out / "p1" / "session_1" / "reaction_clip_2_features.csv").is_file()
    room = pd.read_csv(out / "p1" / "room_features.csv")
    assert len(room) == 5 and (room["face_detection_confidence_score"] == 0).all()
    assert not (out / "p1" / "broken_features.csv").exists()
    report = pd.read_csv(out / "extract_report.csv")
    assert len(report) == 4
    row = report.set_index(report["video"].str.rsplit("/", n=1).str[-1])
    assert (
        row.loc["broken.mp4", "status"] == "failed"
        and "broken.mp4" in row.loc["broken.mp4", "error"]
    )
    assert row.loc["reaction_clip_1.mp4", "frames"] == 24
    assert row.loc["reaction_clip_1.mp4", "face_share"] == 1.0
    assert row.loc["room.y4m", "face_share"] == 0.0

    frames = pd.read_csv(first)
    assert tuple(frames.columns) == FRAME_COLUMNS
    assert compute_activation_values(frames).iloc[0]["AU12_activation_value"] > 0.8

    # Resume: finished outputs are skipped (their files untouched), the bad one retried.
    stamp = first.stat().st_mtime_ns
    assert main(["extract", str(src), "--out", str(out)]) == 1
    assert "0 extracted, 3 skipped" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp
    (src / "p1" / "broken.mp4").unlink()
    assert main(["extract", str(src), "--out", str(out)]) == 0
    # An interrupted write leaves no partial output behind.
    assert not list(out.rglob(".*.tmp"))


def test_single_file_parquet_and_baseline_seconds(videos, tmp_path):
    video = videos / "p1" / "session_1" / "reaction_clip_1.mp4"
    out = tmp_path / "out"
    assert (
        main(
            [
                "extract",
                str(video),
                "--out",
                str(out),
                "--format",
                "parquet",
                "--baseline-seconds",
                "0.3",
            ]
        )
        == 0
    )
    table = pd.read_parquet(out / "reaction_clip_1_features.parquet")
    assert tuple(table.columns) == FRAME_COLUMNS
    assert table["AU12"].iloc[:9].max() < 0.3 and table["AU12"].iloc[-5:].min() > 1.0


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["extract", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no video files" in capsys.readouterr().err
    assert (
        main(["extract", str(tmp_path), "--out", str(tmp_path / "o"), "--estimator", "ir50"]) == 2
    )
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["extract", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = capsys.readouterr().out
    assert "face_detection_confidence_score" in text and "--workers" in text and "resume" in text


@pytest.mark.slow
def test_two_worker_processes_give_the_same_files(videos, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["extract", str(videos), "--out", str(one)]) == 0
    assert main(["extract", str(videos), "--out", str(two), "--workers", "2"]) == 0
    files = sorted(p.relative_to(one) for p in one.rglob("*_features.csv"))
    assert len(files) == 3
    for rel in files:
        assert (one / rel).read_bytes() == (two / rel).read_bytes()


def test_decimals_follow_the_release_per_clip_kind(videos, tmp_path):
    """Baseline clips are written with 2 decimals and reaction clips with 3, as in the release."""
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(videos / "p1" / "session_1" / "reaction_clip_1.mp4", src / "reaction_clip_1.mp4")
    shutil.copy(videos / "p1" / "session_1" / "reaction_clip_1.mp4", src / "baseline_clip_1.mp4")
    out = tmp_path / "out"
    assert main(["extract", str(src), "--out", str(out)]) == 0
    reaction = (out / "reaction_clip_1_features.csv").read_text().splitlines()[1].split(",")
    baseline = (out / "baseline_clip_1_features.csv").read_text().splitlines()[1].split(",")
    assert reaction[1] == baseline[1] == "0.000"  # timestamps always have 3
    assert all(len(v.split(".")[1]) == 3 for v in reaction[2:])
    assert all(len(v.split(".")[1]) == 2 for v in baseline[2:])
    assert main(["extract", str(src), "--out", str(tmp_path / "o2"), "--decimals", "2"]) == 0
    forced = (
        (tmp_path / "o2" / "reaction_clip_1_features.csv").read_text().splitlines()[1].split(",")
    )
    assert all(len(v.split(".")[1]) == 2 for v in forced[2:])


def _outputs(out):
    """{output path relative to OUT: number of rows}."""
    return {
        str(p.relative_to(out)): len(pd.read_csv(p)) for p in sorted(out.rglob("*_features.csv"))
    }


def test_same_named_videos_in_several_folders_get_their_own_outputs(tmp_path, capsys):
    inp = tmp_path / "in"
    for i, folder in enumerate(("s1", "s2", "s3")):
        gray_clip(inp / folder / "reaction_clip_1.mp4", 3 + i)
    s1, s2, s3 = (str(inp / f) for f in ("s1", "s2", "s3"))
    expected = {f"s{i + 1}/reaction_clip_1_features.csv": 3 + i for i in range(3)}

    out1 = tmp_path / "out1"
    assert main(["extract", s1, s2, s3, "--out", str(out1)]) == 0
    assert _outputs(out1) == expected
    report = pd.read_csv(out1 / "extract_report.csv")
    assert len(report) == 3 and (report["status"] == "ok").all()
    assert sorted(report["frames"]) == [3, 4, 5]

    # Another argument order maps every video to the same file.
    out2 = tmp_path / "out2"
    assert main(["extract", s3, s1, s2, "--out", str(out2)]) == 0
    assert _outputs(out2) == expected

    # Re-run in another order: each video skipped onto its own output, and the report
    # keeps the figures of the first run instead of empty rows.
    capsys.readouterr()
    assert main(["extract", s2, s3, s1, "--out", str(out1)]) == 0
    assert "0 extracted, 3 skipped" in capsys.readouterr().out
    again = pd.read_csv(out1 / "extract_report.csv")
    assert (again["status"] == "skipped").all()
    assert sorted(again["frames"]) == [3, 4, 5]
    assert (again["face_share"] == 0).all() and again["seconds"].notna().all()


def test_a_video_given_twice_is_extracted_once(tmp_path, capsys):
    video = gray_clip(tmp_path / "in" / "s1" / "clip.mp4", 3)
    gray_clip(tmp_path / "in" / "s2" / "clip.mp4", 4)
    out = tmp_path / "out"
    args = [str(video), str(tmp_path / "in" / "s1"), str(tmp_path / "in" / "s2"), str(video)]
    assert main(["extract", *args, "--out", str(out)]) == 0
    assert "2 extracted" in capsys.readouterr().out
    assert _outputs(out) == {"s1/clip_features.csv": 3, "s2/clip_features.csv": 4}
    assert len(pd.read_csv(out / "extract_report.csv")) == 2


def test_input_folders_with_the_same_name_and_same_stem_videos(tmp_path):
    a = gray_clip(tmp_path / "a" / "s1" / "clip.mp4", 3).parent
    b = gray_clip(tmp_path / "b" / "s1" / "clip.mp4", 4).parent
    gray_clip(a / "clip.webm", 5)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["extract", str(a), str(b), "--out", str(one)]) == 0
    assert main(["extract", str(b), str(a), "--out", str(two)]) == 0
    files = _outputs(one)
    assert files == _outputs(two) and len(files) == 3
    assert sorted(files.values()) == [3, 4, 5]
    folders = {f.split("/")[0] for f in files}
    assert len(folders) == 2 and all(f.startswith("s1-") for f in folders)
    names = {f.split("/")[1] for f in files}
    assert names == {"clip_mp4_features.csv", "clip_webm_features.csv", "clip_features.csv"}


def test_a_video_that_cannot_be_mapped_is_reported_not_dropped(tmp_path, monkeypatch, capsys):
    from fergi.batch import _extract

    # Force every disambiguating hash to clash: nothing can separate the two videos.
    monkeypatch.setattr(_extract, "_short_hash", lambda path, n=6: "0")
    a = gray_clip(tmp_path / "a" / "s1" / "clip.mp4", 3).parent
    b = gray_clip(tmp_path / "b" / "s1" / "clip.mp4", 4).parent
    out = tmp_path / "out"
    assert main(["extract", str(a), str(b), "--out", str(out)]) == 1
    assert "clip.mp4" in capsys.readouterr().err
    report = pd.read_csv(out / "extract_report.csv")
    assert len(report) == 2 and (report["status"] == "failed").all()
    assert not _outputs(out)


def test_single_input_with_two_extensions_of_one_name(tmp_path):
    folder = tmp_path / "in"
    gray_clip(folder / "x.mp4", 3)
    gray_clip(folder / "x.webm", 4)
    out = tmp_path / "out"
    assert main(["extract", str(folder), "--out", str(out)]) == 0
    assert _outputs(out) == {"x_mp4_features.csv": 3, "x_webm_features.csv": 4}


def test_bad_out_is_a_one_line_error(tmp_path, capsys):
    video = gray_clip(tmp_path / "clip.mp4", 3)
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "sub"):
        assert main(["extract", str(video), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out") and str(out) in err and len(err.splitlines()) == 1
    # The report itself cannot be written (its name is taken by a folder).
    out = tmp_path / "out"
    (out / "extract_report.csv").mkdir(parents=True)
    assert main(["extract", str(video), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "extract_report.csv" in err


def test_interrupt_leaves_a_report_of_finished_videos(tmp_path, monkeypatch, capsys):
    """SIGTERM is handled like Ctrl-C: stop, and keep the report of what was done."""
    import signal

    from fergi.batch import _jobs

    for i in range(3):
        gray_clip(tmp_path / "in" / f"clip_{i}.mp4", 3 + i)
    real = _jobs._process
    calls = []

    def process(job, progress=None, **options):
        calls.append(job.video)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)
        return real(job, progress, **options)

    class NotHandled(Exception):
        pass

    def ours(signum, frame):
        raise NotHandled

    monkeypatch.setattr(_jobs, "_process", process)
    previous = signal.signal(signal.SIGTERM, ours)
    try:
        out = tmp_path / "out"
        assert main(["extract", str(tmp_path / "in"), "--out", str(out)]) == 130
        assert signal.getsignal(signal.SIGTERM) is ours  # restored after the run
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "interrupted" in capsys.readouterr().err
    report = pd.read_csv(out / "extract_report.csv")
    assert list(report["status"]) == ["ok"] and report["frames"].iloc[0] == 3
    assert _outputs(out) == {"clip_0_features.csv": 3}


def test_worker_pool_is_stopped_when_interrupted():
    """An exception (Ctrl-C, SIGTERM) in the main loop kills running workers at once."""
    import multiprocessing as mp
    import time

    from fergi.batch import _local

    before = set(mp.active_children())
    running = []

    def on_result(job, result, error):
        running.extend(p for p in mp.active_children() if p not in before)
        raise KeyboardInterrupt

    # Job 0 ends at once; the other worker would sleep for minutes if left alone.
    with pytest.raises(KeyboardInterrupt):
        _local._run_pool(time.sleep, [0, 300, 300], 2, on_result)
    assert running  # the workers were there ...
    # ... and are gone (reaped; a loaded machine may still be finishing an exit)
    for _ in range(100):
        left = [p for p in mp.active_children() if p not in before]
        if not left:
            break
        time.sleep(0.1)
    assert not left
    assert not any(p.is_alive() for p in running)


@pytest.mark.parametrize("value", ["0", "-2", "nan", "soon"])
def test_baseline_seconds_must_be_positive(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(tmp_path), "--out", str(tmp_path / "o"), "--baseline-seconds", value])
    assert exit_info.value.code == 2
    assert "--baseline-seconds" in capsys.readouterr().err


def test_library_rejects_a_baseline_of_no_seconds(tmp_path):
    from fergi import FergiError
    from fergi.au import extract_features

    video = gray_clip(tmp_path / "clip.mp4", 3)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(FergiError, match="baseline_seconds"):
            extract_features(video, baseline_seconds=bad)
