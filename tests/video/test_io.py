"""fergi.video: decoding, 30 fps standardisation, variable frame rate, bad files."""

from __future__ import annotations

import numpy as np
import pytest

from fergi import FergiError
from fergi.video import find_videos, iter_frames, read_video, write_video


def _ramp(n, h=48, w=64):
    # Each frame has a distinct, codec-robust grey level so frames can be identified.
    return [np.full((h, w, 3), 10 + 7 * i, np.uint8) for i in range(n)]


def _frame_ids(video):
    return np.round((video.frames[:, 8, 8, 0].astype(float) - 10) / 7).astype(int)


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi", ".y4m"])
def test_roundtrip_constant_rate(tmp_path, suffix):
    path = write_video(tmp_path / f"v{suffix}", _ramp(20), fps=30)
    video = read_video(path)
    assert video.frames.shape == (20, 48, 64, 3)
    assert video.fps == 30.0
    np.testing.assert_allclose(video.timestamps, np.arange(20) / 30, atol=1e-9)
    np.testing.assert_array_equal(_frame_ids(video), np.arange(20))


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".mkv", "libx265"), (".webm", "libvpx"), (".mov", "mpeg4"), (".avi", "mjpeg")],
)
def test_decodes_common_codecs(tmp_path, suffix, codec):
    import av

    path = tmp_path / f"v{suffix}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000
        if codec == "libx265":
            stream.options = {"log-level": "error", "x265-params": "log-level=error"}
        for img in _ramp(12):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    video = read_video(path)
    np.testing.assert_array_equal(_frame_ids(video), np.arange(12))
    np.testing.assert_allclose(video.timestamps, np.arange(12) / 30, atol=1e-9)


def test_portrait_phone_video_is_turned_upright(tmp_path):
    import struct

    img = np.zeros((48, 64, 3), np.uint8)
    img[:10, :20] = 255  # a mark in the top-left corner
    data = bytearray(write_video(tmp_path / "v.mp4", [img] * 3).read_bytes())
    # Display matrix "rotate 90 degrees clockwise", as phones write it in the track
    # header (tkhd version 0: the matrix starts 40 bytes after the box type).
    i = data.find(b"tkhd")
    assert data[i + 4] == 0
    off = i + 4 + 4 + 20 + 8 + 8
    assert struct.unpack(">9i", data[off : off + 36])[0] == 0x10000
    data[off : off + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path = tmp_path / "portrait.mp4"
    path.write_bytes(bytes(data))
    frame = read_video(path).frames[0]
    assert frame.shape == (64, 48, 3)
    assert frame[:20, -10:].mean() > 200 and frame[:20, :10].mean() < 50  # now top-right


def test_variable_frame_rate_webm_is_standardised_by_stream_time(tmp_path):
    # A 640x480 VP9 webm on a millisecond clock with irregular frame gaps, like a
    # browser MediaRecorder file (no duration metadata is written for live streams).
    rng = np.random.default_rng(3)
    gaps = rng.choice([0.020, 0.033, 0.050, 0.090], size=29)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    path = write_video(tmp_path / "vfr.webm", _ramp(30, 480, 640), fps=30, timestamps=times)

    native = read_video(path, fps=None)
    assert native.fps is None
    assert native.frames.shape == (30, 480, 640, 3)
    np.testing.assert_allclose(native.timestamps, np.round(times, 3), atol=1.5e-3)

    video = read_video(path, fps=30)
    n_ticks = int(np.floor(np.round(times[-1], 3) * 30 + 1e-6)) + 1
    assert len(video) == n_ticks
    np.testing.assert_allclose(video.timestamps, np.arange(n_ticks) / 30)
    # For every tick the latest frame shown at or before it.
    expected = np.searchsorted(np.round(times, 3), np.arange(n_ticks) / 30 + 2e-3, side="right") - 1
    np.testing.assert_array_equal(_frame_ids(video), expected)


def test_time_range_and_streaming_agree(tmp_path):
    path = write_video(tmp_path / "v.mp4", _ramp(30), fps=30)
    part = read_video(path, start=0.5, end=0.8)
    np.testing.assert_array_equal(_frame_ids(part), np.arange(15, 24))
    np.testing.assert_allclose(part.timestamps, np.arange(9) / 30, atol=1e-9)
    streamed = list(iter_frames(path, start=0.5, end=0.8))
    assert [round(t, 6) for t, _ in streamed] == [round(t, 6) for t in part.timestamps]


def test_resampling_to_lower_rate_takes_latest_earlier_frame(tmp_path):
    path = write_video(tmp_path / "v.mp4", _ramp(30), fps=30)
    video = read_video(path, fps=10)
    np.testing.assert_array_equal(_frame_ids(video), np.arange(0, 30, 3))


def test_bad_files_raise_fergi_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.webm"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    good = write_video(tmp_path / "good.mp4", _ramp(30), fps=30)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for bad in (empty, junk, text, truncated, tmp_path / "missing.mp4", tmp_path):
        with pytest.raises(FergiError) as info:
            read_video(bad)
        assert str(bad) in str(info.value)
        assert "\n" not in str(info.value)


def test_zero_frame_file(tmp_path):
    # A valid container with a video stream but no frames at all.
    path = write_video(tmp_path / "zero.webm", [], fps=30)
    with pytest.raises(FergiError, match="zero.webm"):
        read_video(path)


def test_audio_only_file_is_not_a_video(tmp_path):
    import av

    path = tmp_path / "sound.webm"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = 48000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(FergiError, match="no video stream"):
        read_video(path)


def test_find_videos_recurses_and_rejects_missing_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    write_video(tmp_path / "a" / "x.mp4", _ramp(2), fps=30)
    write_video(tmp_path / "a" / "b" / "y.webm", _ramp(2), fps=30)
    (tmp_path / "a" / "readme.txt").write_text("hi")
    found = find_videos([tmp_path])
    assert sorted(p.name for p in found) == ["x.mp4", "y.webm"]
    assert find_videos([tmp_path, tmp_path / "a" / "x.mp4"]) == found  # no duplicates
    with pytest.raises(FergiError, match="nope"):
        find_videos([tmp_path / "nope"])
