"""Activation values and screening: exact reproduction and edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fergi import FergiError
from fergi.datasets import ACTIVATION_COLUMNS, AU_NAMES
from fergi.features import (
    compute_activation_values,
    frame_validity,
    screen_participants,
    window_length,
)


@pytest.mark.parametrize("kind", ["reaction", "baseline"])
def test_reproduces_published_activation_values(fergi_public, release_clips, release_table, kind):
    """Recomputed from data/ = the published preprocessed_<kind>_data, row for row."""
    published = []
    for path in sorted((fergi_public / "preparation" / f"preprocessed_{kind}_data").glob("*.csv")):
        published.append(pd.read_csv(path).assign(participant=path.stem))
    published = pd.concat(published, ignore_index=True).rename(
        columns={"session_index": "session", "image_index": "image"}
    )
    if kind == "reaction":
        mine = release_table
    else:
        clips = release_clips
        mine = clips[(clips["clip"] == "baseline") & clips["clip_valid"]].copy()
        mine["participant"] = mine["participant"].astype(str)
    keys = ["participant", "session", "image"]
    merged = published.merge(mine, on=keys, how="outer", indicator=True, suffixes=("_pub", ""))
    assert (merged["_merge"] == "both").all(), merged.loc[merged["_merge"] != "both", [*keys, "_merge"]]
    assert len(merged) == {"reaction": 2217, "baseline": 2044}[kind]
    diff = np.abs(
        merged[[f"{c}_pub" for c in ACTIVATION_COLUMNS]].to_numpy() - merged[list(ACTIVATION_COLUMNS)].to_numpy()
    )
    assert diff.max() < 1e-9


def test_screening_returns_the_papers_three_participants(release_clips):
    assert screen_participants(release_clips) == ["002", "004", "039"]


def test_screening_is_parameterised(release_clips):
    stricter = screen_participants(release_clips, threshold=0.3)
    assert set(stricter) > {"002", "004", "039"}
    assert screen_participants(release_clips, threshold=100.0) == []


def _clip(values, *, fps=30.0, valid=None, au="AU12"):
    n = len(values)
    table = pd.DataFrame(
        {
            "frame": np.arange(1, n + 1),
            "timestamp": np.round(np.arange(n) / fps, 3),
            "face_detection_confidence_score": 0.97,
            "pitch_indicative_ratio": 0.7,
            "yaw_indicative_ratio": 0.5,
        }
    )
    for name in AU_NAMES:
        table[name] = 0.0
    table[au] = np.asarray(values, dtype=float)
    if valid is not None:
        table.loc[~np.asarray(valid), "face_detection_confidence_score"] = 0.5
    return table


def test_single_clip_window_of_three():
    values = [1.0, 2.0, 3.0, 10.0, 0.0, 0.0]
    out = compute_activation_values(_clip(values))
    assert len(out) == 1
    means = [2.0, 5.0, 13 / 3, 10 / 3]
    assert out["AU12_activation_value"].iloc[0] == pytest.approx(max(means) - means[0])
    assert out["n_frames"].iloc[0] == 6 and out["clip_valid"].iloc[0]


def test_invalid_frames_inside_the_window_are_skipped():
    values = [5.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0, 2.0, 2.0, 2.0, 4.0]
    valid = [False, True, True, True, True, False, True, True, True, True, True]
    out = compute_activation_values(_clip(values, valid=valid), min_valid_share=0.5)
    # Fully valid windows start at frames 2, 3 (1,1,1 / 1,1,9) and 7, 8, 9 (9,2,2 / 2,2,2 / 2,2,4).
    kept = [1.0, 11 / 3, 13 / 3, 2.0, 8 / 3]
    assert out["AU12_activation_value"].iloc[0] == pytest.approx(max(kept) - kept[0])
    assert out["valid_frame_share"].iloc[0] == pytest.approx(9 / 11)


def test_clip_with_no_valid_frames():
    out = compute_activation_values(_clip(np.ones(30), valid=np.zeros(30, dtype=bool)))
    assert not out["clip_valid"].iloc[0]
    assert out["valid_frame_share"].iloc[0] == 0
    assert out[list(ACTIVATION_COLUMNS)].isna().all(axis=None)


def test_clip_validity_threshold_is_inclusive():
    valid = np.ones(10, dtype=bool)
    valid[:2] = False
    out = compute_activation_values(_clip(np.zeros(10), valid=valid))
    assert out["valid_frame_share"].iloc[0] == pytest.approx(0.8) and out["clip_valid"].iloc[0]
    valid[2] = False
    assert not compute_activation_values(_clip(np.zeros(10), valid=valid))["clip_valid"].iloc[0]


def test_another_frame_rate_uses_a_window_in_seconds():
    assert window_length(np.arange(60) / 60) == 6
    assert window_length(np.arange(30) / 30) == 3
    assert window_length(np.arange(25) / 25) == 2  # round(2.5) = 2, as numpy and the published code round
    values = np.r_[np.zeros(20), np.ones(6) * 6, np.zeros(10)]
    at60 = compute_activation_values(_clip(values, fps=60))
    assert at60["AU12_activation_value"].iloc[0] == pytest.approx(6.0)
    # A window of 0.2 s at 60 fps (12 frames) averages the burst with zeros.
    wide = compute_activation_values(_clip(values, fps=60), window_seconds=0.2)
    assert wide["AU12_activation_value"].iloc[0] == pytest.approx(3.0)


def test_mixed_frame_rates_in_one_table():
    a = _clip(np.r_[np.zeros(5), np.full(5, 3.0)], fps=30).assign(participant="p", session=1, image=1, clip="reaction")
    b = _clip(np.r_[np.zeros(10), np.full(10, 3.0)], fps=60).assign(participant="p", session=1, image=2, clip="reaction")
    out = compute_activation_values(pd.concat([a, b], ignore_index=True))
    assert list(out["image"]) == [1, 2]
    np.testing.assert_allclose(out["AU12_activation_value"], [3.0, 3.0])


def test_interleaved_rows_are_grouped_per_clip():
    a = _clip([0.0, 0.0, 0.0, 3.0, 3.0, 3.0]).assign(participant="p", session=1, image=1, clip="reaction")
    b = _clip([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).assign(participant="p", session=1, image=2, clip="reaction")
    mixed = pd.concat([a, b]).sort_values("frame", kind="stable")
    out = compute_activation_values(mixed)
    np.testing.assert_allclose(out.sort_values("image")["AU12_activation_value"], [3.0, 0.0])


def test_frame_validity_bounds_are_inclusive():
    table = pd.DataFrame(
        {
            "face_detection_confidence_score": [0.9, 0.89, 0.95, 0.95, 0.95, 0.95],
            "pitch_indicative_ratio": [0.55, 0.7, 0.85, 0.86, 0.7, 0.7],
            "yaw_indicative_ratio": [0.3, 0.5, 0.7, 0.5, 0.71, -1],
        }
    )
    assert frame_validity(table).tolist() == [True, False, True, False, False, False]


def test_missing_columns_are_reported():
    with pytest.raises(FergiError, match=r"missing column\(s\) AU12"):
        compute_activation_values(_clip([1, 2, 3]).drop(columns="AU12"))


def test_rows_out_of_frame_order_are_put_back_in_order():
    values = [0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 1.0, 1.0]
    ordered = compute_activation_values(_clip(values))
    shuffled = _clip(values).sample(frac=1.0, random_state=0)
    assert compute_activation_values(shuffled)["AU12_activation_value"].iloc[0] == pytest.approx(
        ordered["AU12_activation_value"].iloc[0]
    )
