"""Recording media: chunk assembly, 30 fps standardisation and clip cutting."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from skimage import data

from fergi import FergiError
from fergi.study.processing import assemble_chunks, clip_windows, cut_clips, standardize_video
from fergi.video import read_video, write_video

BITS = 9
BLOCK = 24  # px per bit: survives VP9 and H.264 compression


def _stamp(image: np.ndarray, index: int) -> np.ndarray:
    """The astronaut with ``index`` written as black/white blocks in its top rows."""
    frame = image.copy()
    for bit in range(BITS):
        frame[:16, bit * BLOCK : (bit + 1) * BLOCK] = 255 if (index >> bit) & 1 else 0
    return frame


def _read_stamp(frame: np.ndarray) -> int:
    blocks = [frame[2:14, b * BLOCK + 4 : (b + 1) * BLOCK - 4].mean() for b in range(BITS)]
    return sum(1 << b for b, v in enumerate(blocks) if v > 127)


def _stamps(path) -> list[int]:
    return [_read_stamp(f) for f in read_video(path, fps=None).frames]


@pytest.fixture(scope="module")
def face():
    return data.astronaut()[:240, 96:416]  # 320 x 240, the face in the middle


def _vfr_times(n, seed=0):
    """Millisecond frame times 20-50 ms apart, none within 4 ms of a 1/30 s tick
    (so the expected frame of every tick is unambiguous)."""
    rng = np.random.default_rng(seed)
    times = [0]
    while len(times) < n:
        t = times[-1] + int(rng.integers(20, 51))
        phase = (t * 30) % 1000 / 30  # ms since the last tick
        if 4 <= phase <= 33.3 - 4:
            times.append(t)
    return np.asarray(times) / 1000.0


def _expected_ticks(times, fps=30):
    """For each 1/fps tick up to the last frame, the index of the latest earlier frame."""
    n_ticks = math.floor(times[-1] * fps + 1e-6) + 1
    return [int(np.searchsorted(times, k / fps + 1e-9, side="right") - 1) for k in range(n_ticks)]


@pytest.fixture(scope="module")
def vfr_webm(tmp_path_factory, face):
    """A variable-frame-rate VP9 webm (like MediaRecorder's) of 150 stamped frames."""
    times = _vfr_times(150)
    path = tmp_path_factory.mktemp("media") / "recording.webm"
    write_video(path, [_stamp(face, i) for i in range(len(times))], timestamps=times)
    return path, times


def test_stamps_survive_encoding(vfr_webm):
    path, times = vfr_webm
    assert _stamps(path) == list(range(len(times)))


# --------------------------------------------------------------------------- assemble


def _split(data_bytes: bytes, cuts) -> list[bytes]:
    edges = [0, *cuts, len(data_bytes)]
    return [data_bytes[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]


def test_assemble_chunks_concatenates_one_stream(vfr_webm, tmp_path):
    path, times = vfr_webm
    raw = path.read_bytes()
    # MediaRecorder cuts anywhere: a tiny first chunk (header only), then arbitrary sizes
    pieces = _split(raw, [60, len(raw) // 2, len(raw) // 2 + 1, 9 * len(raw) // 10])
    chunks = []
    for i, piece in enumerate(pieces):
        chunk = tmp_path / "chunks" / f"{i:06d}.part"
        chunk.parent.mkdir(exist_ok=True)
        chunk.write_bytes(piece)
        chunks.append(chunk)
    out = assemble_chunks(chunks, tmp_path / "out" / "recording.webm")
    assert out.read_bytes() == raw
    assert _stamps(out) == list(range(len(times)))
    assert all(c.is_file() for c in chunks)  # the uploads are kept
    assert not list(out.parent.glob(".*partial*"))

    # a recording whose tab closed mid-upload: the prefix still decodes
    prefix = assemble_chunks(chunks[:3], tmp_path / "prefix.webm")
    n = len(_stamps(prefix))
    assert 0 < n < len(times) and _stamps(prefix) == list(range(n))


def test_assemble_chunks_errors(vfr_webm, tmp_path):
    path, _ = vfr_webm
    raw = path.read_bytes()
    a, b = tmp_path / "a.part", tmp_path / "b.part"
    a.write_bytes(raw[:500])
    b.write_bytes(raw[500:])
    out = tmp_path / "rec.webm"
    with pytest.raises(FergiError, match="no recording chunks"):
        assemble_chunks([], out)
    with pytest.raises(FergiError, match="missing.part: recording chunk 1 does not exist"):
        assemble_chunks([a, tmp_path / "missing.part"], out)
    (tmp_path / "empty.part").write_bytes(b"")
    with pytest.raises(FergiError, match="recording chunk 1 is empty"):
        assemble_chunks([a, tmp_path / "empty.part"], out)
    with pytest.raises(FergiError, match="does not start with a WebM header"):
        assemble_chunks([b, a], out)
    garbage = tmp_path / "garbage.part"
    garbage.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 20)
    with pytest.raises(FergiError, match=r"rec.webm \(assembled from 1 chunks\): "):
        assemble_chunks([garbage], out)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def _write_live_webm(path, frames, times_ms):
    """A webm as MediaRecorder writes it: live mode, so no duration, no cues, no frame count."""
    from fractions import Fraction

    import av

    container = av.open(str(path), "w", format="webm", options={"live": "1"})
    stream = container.add_stream(
        "libvpx-vp9",
        rate=30,
        options={"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"},
    )
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    for frame, t in zip(frames, times_ms, strict=True):
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts, video_frame.time_base = int(t), Fraction(1, 1000)
        for packet in stream.encode(video_frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def test_mediarecorder_like_stream_without_duration(tmp_path, face):
    import av

    times = _vfr_times(60, seed=3)
    live = _write_live_webm(
        tmp_path / "live.webm", [_stamp(face, i) for i in range(60)], np.round(times * 1000)
    )
    with av.open(str(live)) as container:  # nothing to read the length from
        assert container.duration is None and container.streams.video[0].frames == 0
    raw = live.read_bytes()
    chunks = []
    for i, piece in enumerate(_split(raw, [len(raw) // 4, len(raw) // 2])):
        chunks.append(tmp_path / f"{i}.part")
        chunks[-1].write_bytes(piece)
    assembled = assemble_chunks(chunks, tmp_path / "assembled.webm")
    out = standardize_video(assembled, tmp_path / "std.mp4")
    assert _stamps(out) == _expected_ticks(times)


# --------------------------------------------------------------------------- standardise


def test_standardize_variable_frame_rate(vfr_webm, tmp_path):
    path, times = vfr_webm
    out = standardize_video(path, tmp_path / "std.mp4")
    expected = _expected_ticks(times)
    video = read_video(out, fps=None)
    # frames counted by decoding: one per 1/30 s tick from the first frame to the last
    assert len(video) == len(expected) == math.floor(times[-1] * 30) + 1
    np.testing.assert_allclose(video.timestamps, np.arange(len(expected)) / 30, atol=1e-3)
    assert [_read_stamp(f) for f in video.frames] == expected
    # some source frames were repeated and some dropped (it really was variable)
    assert len(set(expected)) < len(times) and len(set(expected)) < len(expected)
    # the extraction stage reads it back at 30 fps without change
    assert len(read_video(out, fps=30)) == len(expected)


def test_standardize_constant_rate_face_video(tmp_path, face):
    face_mod = pytest.importorskip("fergi.face")
    if not hasattr(face_mod, "write_reaction_video"):
        pytest.skip("fergi.face.write_reaction_video not available")
    src = face_mod.write_reaction_video(
        tmp_path / "face.webm",
        data.astronaut(),
        neutral_s=0.5,
        expression_s=0.5,
        smile=1.0,
        size=(320, 240),
    )
    out = standardize_video(src, tmp_path / "face_30.mp4")
    video = read_video(out, fps=None)
    assert len(video) == 30 and video.frames.shape[1:] == (240, 320, 3)


def test_standardize_errors(tmp_path):
    with pytest.raises(FergiError, match="nothing.webm: no such file"):
        standardize_video(tmp_path / "nothing.webm", tmp_path / "o.mp4")
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(FergiError, match="bad.webm: not a readable video"):
        standardize_video(bad, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()
    with pytest.raises(FergiError, match="fps must be positive"):
        standardize_video(bad, tmp_path / "o.mp4", fps=0)


# --------------------------------------------------------------------------- clips


def _events(*images):
    """Events of images given as (index, baseline_start, image_shown)."""
    out = []
    for index, base, shown in images:
        out += [
            {"image_index": index, "kind": "baseline_start", "video_time": base},
            {"image_index": index, "kind": "image_shown", "video_time": shown},
            {"image_index": index, "kind": "image_hidden", "video_time": shown + 1.0},
        ]
    return out


def test_cut_clips_by_event_times(vfr_webm, tmp_path, caplog):
    path, times = vfr_webm
    ticks = _expected_ticks(times)
    std = standardize_video(path, tmp_path / "std.mp4")
    last = times[-1]
    events = _events((1, 0.10, 0.62), (2, 1.55, 2.0), (3, last - 0.6, last - 0.2))
    with caplog.at_level(logging.WARNING):
        clips = cut_clips(std, events, tmp_path / "clips", baseline_s=0.4, reaction_s=0.5)
    assert sorted(clips) == [1, 2, 3]
    assert clips[2]["reaction"] == tmp_path / "clips" / "reaction_clip_2.mp4"
    for image, base, shown in [(1, 0.10, 0.62), (2, 1.55, 2.0)]:
        for kind, start, n in (("baseline", base, 12), ("reaction", shown, 15)):
            first = math.floor(start * 30 + 1e-6)
            video = read_video(clips[image][kind], fps=None)
            assert len(video) == n, (image, kind)
            assert [_read_stamp(f) for f in video.frames] == ticks[first : first + n]
            np.testing.assert_allclose(video.timestamps, np.arange(n) / 30, atol=1e-3)
    # image 3's reaction clip runs past the end of the recording: kept shorter, with a warning
    n3 = len(read_video(clips[3]["reaction"], fps=None))
    assert n3 == len(ticks) - math.floor((last - 0.2) * 30 + 1e-6) < 15
    assert "the recording ends" in caplog.text
    # cutting the raw variable-rate recording gives the same frames
    raw = cut_clips(path, events[:3], tmp_path / "raw", baseline_s=0.4, reaction_s=0.5)
    assert _stamps(raw[1]["reaction"]) == _stamps(clips[1]["reaction"])


def test_cut_clips_skips_incomplete_images(vfr_webm, tmp_path, caplog):
    path, times = vfr_webm
    events = _events((1, 0.1, 0.5)) + [
        {"image_index": 2, "kind": "baseline_start", "video_time": 1.0},  # tab closed
        {"image_index": 4, "kind": "baseline_start", "video_time": times[-1] + 5},
        {"image_index": 4, "kind": "image_shown", "video_time": times[-1] + 6},
    ]
    with caplog.at_level(logging.WARNING):
        clips = cut_clips(path, events, tmp_path / "c", baseline_s=0.3, reaction_s=0.3)
    assert sorted(clips) == [1]
    assert "image 2 has no image_shown event" in caplog.text
    assert "ends before the baseline clip of image 4 starts" in caplog.text
    assert not (tmp_path / "c" / "baseline_clip_4.mp4").exists()
    assert not list((tmp_path / "c").glob(".*partial*"))


def test_repeated_event_uses_the_last():
    events = _events((1, 0.1, 0.5)) + [{"image_index": 1, "kind": "image_shown", "video_time": 2.0}]
    windows = {w.kind: w for w in clip_windows(events, baseline_s=1, reaction_s=1)}
    assert windows["reaction"].first == 60 and windows["reaction"].n == 30
    assert windows["baseline"].first == 3


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"image_index": 1, "kind": "shown", "video_time": 1.0}, "unknown kind"),
        (
            {"image_index": "1", "kind": "image_shown", "video_time": 1.0},
            "image_index must be an integer",
        ),
        (
            {"image_index": 1, "kind": "image_shown", "video_time": "1s"},
            "video_time must be a number",
        ),
        (
            {"image_index": 1, "kind": "image_shown", "video_time": float("nan")},
            "before the recording",
        ),
        (
            {"image_index": 1, "kind": "image_shown", "video_time": -3.0},
            "before the recording started",
        ),
    ],
)
def test_malformed_events(vfr_webm, tmp_path, event, message):
    path, _ = vfr_webm
    with pytest.raises(FergiError, match=message):
        cut_clips(path, [event], tmp_path / "c")


def test_cut_clips_errors(vfr_webm, tmp_path):
    path, times = vfr_webm
    with pytest.raises(FergiError, match="no image has both"):
        cut_clips(path, [{"image_index": 1, "kind": "baseline_start", "video_time": 0.0}], tmp_path)
    with pytest.raises(FergiError, match="holds no complete image"):
        cut_clips(path, _events((1, times[-1] + 1, times[-1] + 2)), tmp_path / "c")
    with pytest.raises(FergiError, match="reaction_s must be a positive number"):
        cut_clips(path, _events((1, 0, 1)), tmp_path / "c", reaction_s=0)
    # a recording whose data breaks off: a clear error, no half-written clip
    raw = path.read_bytes()
    broken = tmp_path / "broken.webm"
    broken.write_bytes(raw[:200])
    with pytest.raises(FergiError, match="broken.webm"):
        cut_clips(broken, _events((1, 0.1, 0.5)), tmp_path / "c2")
    assert not list((tmp_path / "c2").glob("*.mp4")) if (tmp_path / "c2").exists() else True
