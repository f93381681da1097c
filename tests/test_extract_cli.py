"""``fergi extract``: batch, resume, report, bad videos, workers, formats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage import data

from fergi.cli._main import main
from fergi.datasets import FRAME_COLUMNS
from fergi.face import reaction_frames
from fergi.features import compute_activation_values
from fergi.video import write_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    frames = list(reaction_frames(data.astronaut(), neutral_s=0.4, expression_s=0.4, smile=0.8))
    (root / "p1" / "session_1").mkdir(parents=True)
    write_video(root / "p1" / "session_1" / "reaction_clip_1.mp4", frames)
    write_video(root / "p1" / "session_1" / "reaction_clip_2.webm", frames[::-1])
    write_video(root / "p1" / "room.y4m", [np.full((120, 160, 3), 70, np.uint8)] * 5)
    return root


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
    forced = (tmp_path / "o2" / "reaction_clip_1_features.csv").read_text().splitlines()[1].split(",")
    assert all(len(v.split(".")[1]) == 2 for v in forced[2:])
