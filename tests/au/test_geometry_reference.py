"""The geometry estimator's neutral face without a baseline: least-expressive frames.

Clips are ``skimage.data.astronaut()`` (a real photograph) framed like a webcam, neutral
for the first 20 % of the frames and then warped by the FaceMesh-driven thin-plate
spline into a synthetic AU12 smile or AU4 frown for the rest (0.2 s onset), written as
H.264 so that the landmarks carry real codec noise. No baseline is given. The clip's
median face (the old reference) is then the expression, which these tests catch: the
neutral frames read AU15 (or AU1) and the smile reads nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from fergi.au import GeometryAUEstimator, extract_features, least_expressive_frames
from fergi.datasets import AU_NAMES
from fergi.face import reaction_frames, write_reaction_video
from tests.helpers.paths import BENCHMARKS

pytestmark = pytest.mark.slow  # a few synthetic videos, 10-20 s in all

AU = {name: i for i, name in enumerate(AU_NAMES)}
FPS = 30
NEUTRAL_S, EXPRESSION_S = 0.4, 1.6  # 12 of 60 frames neutral
N_NEUTRAL = round(NEUTRAL_S * FPS)
HELD = slice(N_NEUTRAL + 8, None)  # after the 0.2 s onset


def _clip(folder, kind, amount):
    return write_reaction_video(
        folder / f"{kind}.mp4",
        data.astronaut(),
        neutral_s=NEUTRAL_S,
        expression_s=EXPRESSION_S,
        fps=FPS,
        **{kind: amount},
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    return {
        "smile": _clip(folder, "smile", 0.8),
        "frown": _clip(folder, "frown", 1.0),
        "neutral": write_reaction_video(
            folder / "baseline.mp4", data.astronaut(), neutral_s=0.5, expression_s=0.0
        ),
    }


@pytest.fixture(scope="module")
def tables(videos, analyzer):
    return {kind: extract_features(videos[kind], analyzer=analyzer) for kind in ("smile", "frown")}


def _aus(table):
    return table[list(AU_NAMES)].to_numpy()


@pytest.mark.parametrize("kind", ["smile", "frown"])
def test_neutral_frames_read_neutral(tables, kind):
    aus = _aus(tables[kind])
    assert aus[:N_NEUTRAL].max() < 0.5, dict(
        zip(AU_NAMES, aus[:N_NEUTRAL].max(axis=0).round(2), strict=True)
    )


def test_smile_reads_au12_not_its_opposites(tables):
    held = _aus(tables["smile"])[HELD].mean(axis=0)
    assert held[AU["AU12"]] > 1.0, held.round(2)
    for other in ("AU4", "AU15", "AU1"):
        assert held[AU["AU12"]] >= 3 * held[AU[other]], (other, held.round(2))


def test_frown_reads_au4_first(tables):
    held = _aus(tables["frown"])[HELD].mean(axis=0)
    assert held.argmax() == AU["AU4"] and held[AU["AU4"]] > 0.5, held.round(2)


@pytest.mark.parametrize("kind", ["smile", "frown"])
def test_attrs_name_the_least_expressive_frames(tables, kind):
    attrs = tables[kind].attrs
    assert attrs["neutral_reference"] == "least_expressive"
    # The neutral start, not the expression: "frames 1-k (0.00-t s)" with k about 12.
    detail = attrs["neutral_reference_detail"]
    assert detail.startswith("frames 1-") and detail.endswith(" s)")
    last = int(detail.split("-")[1].split()[0])
    assert N_NEUTRAL - 3 <= last <= N_NEUTRAL + 4, detail


def test_a_baseline_clip_is_preferred(videos, analyzer):
    # A smiling "baseline" is taken at its word: the smile then reads as neutral.
    smiling = extract_features(videos["smile"], baseline=videos["smile"], analyzer=analyzer)
    assert smiling.attrs["neutral_reference"] == "baseline_clip"
    assert smiling.attrs["neutral_reference_detail"].startswith("smile.mp4 (60 face frames")
    with_neutral = extract_features(videos["smile"], baseline=videos["neutral"], analyzer=analyzer)
    assert with_neutral.attrs["neutral_reference"] == "baseline_clip"
    assert with_neutral.attrs["neutral_reference_detail"].startswith("baseline.mp4")
    assert _aus(with_neutral)[:N_NEUTRAL].max() < 0.5
    assert _aus(with_neutral)[HELD, AU["AU12"]].mean() > 1.0
    # A clip compared with itself: the median (mostly smile) is the reference, so the
    # smile itself reads far lower than with the neutral baseline.
    assert (
        _aus(smiling)[HELD, AU["AU12"]].mean() < 0.5 * _aus(with_neutral)[HELD, AU["AU12"]].mean()
    )
    first = extract_features(videos["smile"], baseline_seconds=0.3, analyzer=analyzer)
    assert first.attrs["neutral_reference"] == "baseline_seconds"
    assert first.attrs["neutral_reference_detail"] == "first 0.3 s, frames 1-9 (0.00-0.27 s)"
    # The preference order: the baseline clip wins over baseline_seconds.
    both = extract_features(
        videos["smile"], baseline=videos["neutral"], baseline_seconds=0.3, analyzer=analyzer
    )
    assert both.attrs["neutral_reference"] == "baseline_clip"


def test_a_baseline_without_a_face_falls_back_to_least_expressive(tmp_path, videos, analyzer):
    from fergi.video import write_video

    empty = write_video(tmp_path / "empty.mp4", [np.full((120, 160, 3), 90, np.uint8)] * 5)
    table = extract_features(videos["smile"], baseline=empty, analyzer=analyzer)
    assert table.attrs["neutral_reference"] == "least_expressive"
    assert _aus(table)[:N_NEUTRAL].max() < 0.5


def test_a_clip_that_starts_with_the_expression(analyzer):
    # Smiling first, then relaxed: the relaxed end is the neutral face, not the start.
    frames = list(
        reaction_frames(data.astronaut(), neutral_s=NEUTRAL_S, expression_s=EXPRESSION_S, smile=0.8)
    )[::-1]
    lms = np.stack([analyzer.process(f).landmarks for f in frames])
    chosen = least_expressive_frames(lms)
    # The first onset frames (a sixth of the smile and less) are as calm as neutral.
    assert chosen.min() >= len(frames) - N_NEUTRAL - 3, chosen
    aus = GeometryAUEstimator().predict(lms)
    assert aus[-N_NEUTRAL:].max() < 0.5
    assert aus[:30, AU["AU12"]].mean() > 1.0


def test_a_neutral_clip_uses_all_its_frames(analyzer):
    frames = list(reaction_frames(data.astronaut(), neutral_s=0.5, expression_s=0.0))
    lms = np.stack([analyzer.process(f).landmarks for f in frames])
    lms[3] = np.nan  # a frame without a face splits nothing but itself
    chosen = least_expressive_frames(lms)
    assert 3 not in chosen and len(chosen) >= 3
    assert (
        GeometryAUEstimator().fit_least_expressive(lms).reference_frames_.tolist()
        == chosen.tolist()
    )


def test_crosstalk_benchmark_quick_mode(capsys):
    import importlib.util

    path = BENCHMARKS / "bench_geometry_crosstalk.py"
    spec = importlib.util.spec_from_file_location("bench_geometry_crosstalk", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    matrix = bench.main(["--quick"])
    printed = capsys.readouterr().out
    assert "neutral reference: least_expressive" in printed
    assert list(matrix.columns) == list(AU_NAMES) and len(matrix) == 4
    # Each movement reads first as its own AU, stronger at the greater strength.
    for kind, target in (("smile", "AU12"), ("frown", "AU4")):
        rows = matrix.loc[kind]
        assert (rows.idxmax(axis=1) == target).all(), rows.round(2)
        assert rows.loc[1.0, target] > rows.loc[0.5, target]
    for line in ("smile        0.50", "frown        1.00"):
        assert line in printed
