"""Loading the FERGI release layout, and validation of malformed input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fergi import FergiError
from fergi.datasets import (
    AU_NAMES,
    EMOTIONS,
    FRAME_COLUMNS,
    ISSUES,
    SCORE_COLUMNS,
    load_frames,
    load_images,
    load_invalid_images,
    load_valid_sessions,
)
from tests.helpers.release import make_release


def _frames(n=30, fps=30.0, conf=0.97):
    t = np.arange(n) / fps
    table = pd.DataFrame(
        {
            "frame": np.arange(1, n + 1),
            "timestamp": np.round(t, 3),
            "face_detection_confidence_score": conf,
            "pitch_indicative_ratio": 0.7,
            "yaw_indicative_ratio": 0.5,
        }
    )
    for au in AU_NAMES:
        table[au] = 0.1
    return table


def _images(n=2):
    rows = []
    for i in range(1, n + 1):
        row = {"session_index": 1, "image_index": i, "overall_rating": 4, "alignment_rating": 4, "fidelity_rating": 4}
        row.update({k: False for k in (*ISSUES, *EMOTIONS)})
        row["rank_score"] = i
        row.update({s: float(i) for s in SCORE_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def tiny_release(tmp_path):
    clips = {("001", 1, i, kind): _frames() for i in (1, 2) for kind in ("baseline", "reaction")}
    return make_release(tmp_path / "release", clips, {"001": _images()})


def test_release_frames_have_keys_and_published_columns(release_frames):
    assert list(release_frames.columns) == ["participant", "session", "image", "clip", *FRAME_COLUMNS]
    clips = release_frames.groupby(["participant", "session", "image", "clip"], observed=True).size()
    assert len(clips) == 5760
    assert release_frames["participant"].nunique() == 33
    assert set(release_frames["clip"].unique()) == {"baseline", "reaction"}
    # No-face frames are kept with their 0 / -1 values, not dropped.
    no_face = release_frames["face_detection_confidence_score"] == 0
    assert no_face.any()
    assert (release_frames.loc[no_face, "AU12"] == -1).all()


def test_release_frames_match_a_direct_read(fergi_public, release_frames):
    path = fergi_public / "data" / "010" / "session_4" / "reaction_clip_2_features.csv"
    direct = pd.read_csv(path)
    mine = release_frames[
        (release_frames["participant"] == "010")
        & (release_frames["session"] == 4)
        & (release_frames["image"] == 2)
        & (release_frames["clip"] == "reaction")
    ]
    np.testing.assert_array_equal(mine[list(FRAME_COLUMNS)].to_numpy(), direct.to_numpy())


def test_release_images(fergi_public):
    images = load_images(fergi_public)
    assert len(images) == 2827
    assert images["participant"].nunique() == 33
    # Issue answers of participants 001-008 are unreliable and left empty.
    early = images["participant"] <= "008"
    assert images.loc[early, "blurry"].isna().all()
    assert images.loc[~early, "blurry"].notna().all()
    assert images["rank_score"].between(1, 5).all()
    assert images[list(SCORE_COLUMNS)].notna().all().all()


def test_release_sessions_and_invalid_images(fergi_public):
    sessions = load_valid_sessions(fergi_public)
    assert len(sessions) == 33 and sessions["001"][:3] == [1, 2, 3]
    invalid = load_invalid_images(fergi_public)
    assert len(invalid) == 2880 - 2827
    assert all(isinstance(p, str) and isinstance(s, int) for p, s, _ in invalid)


def test_tiny_release_loads(tiny_release):
    frames = load_frames(tiny_release)
    assert len(frames) == 4 * 30
    images = load_images(tiny_release)
    assert list(images["image"]) == [1, 2]


def test_wrong_path_is_one_line(tmp_path):
    with pytest.raises(FergiError, match="no such folder") as err:
        load_frames(tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FergiError, match="no data/ folder"):
        load_frames(tmp_path / "empty")


def _clip_path(root, image=1, kind="reaction"):
    return root / "data" / "001" / "session_1" / f"{kind}_clip_{image}_features.csv"


def test_missing_column_names_the_file(tiny_release):
    path = _clip_path(tiny_release)
    pd.read_csv(path).drop(columns="AU12").to_csv(path, index=False)
    with pytest.raises(FergiError, match=r"reaction_clip_1_features\.csv: missing column\(s\) AU12"):
        load_frames(tiny_release)


def test_non_numeric_value_names_file_column_and_row(tiny_release):
    path = _clip_path(tiny_release, image=2)
    table = pd.read_csv(path).astype({"AU4": object})
    table.loc[4, "AU4"] = "oops"
    table.to_csv(path, index=False)
    with pytest.raises(FergiError, match=r"reaction_clip_2_features\.csv: non-numeric value 'oops' in column 'AU4' \(data row 5\)"):
        load_frames(tiny_release)


def test_empty_and_header_only_files(tiny_release):
    path = _clip_path(tiny_release, kind="baseline")
    path.write_text("")
    with pytest.raises(FergiError, match=r"baseline_clip_1_features\.csv: empty file"):
        load_frames(tiny_release)
    path.write_text(",".join(FRAME_COLUMNS) + "\n")
    with pytest.raises(FergiError, match=r"baseline_clip_1_features\.csv: no frames"):
        load_frames(tiny_release)


def test_ragged_row_names_the_file(tiny_release):
    path = _clip_path(tiny_release)
    with open(path, "a") as fh:
        fh.write("31,1.000,0.9\n")
    with pytest.raises(FergiError, match=r"reaction_clip_1_features\.csv: malformed CSV"):
        load_frames(tiny_release)


def test_reordered_columns_are_accepted(tiny_release):
    path = _clip_path(tiny_release)
    table = pd.read_csv(path)
    table[list(reversed(table.columns))].to_csv(path, index=False)
    frames = load_frames(tiny_release)
    assert list(frames.columns[4:]) == list(FRAME_COLUMNS)
    assert (frames["frame"].to_numpy()[:30] == np.arange(1, 31)).all()


def test_unknown_participant_folder(tiny_release):
    (tiny_release / "data" / "999" / "session_1").mkdir(parents=True)
    with pytest.raises(FergiError, match=r"999: unknown participant folder"):
        load_frames(tiny_release)


def test_participant_filter(tiny_release):
    with pytest.raises(FergiError, match="no feature files for participant"):
        load_frames(tiny_release, participants=["002"])
    assert load_frames(tiny_release, participants=["001"])["participant"].eq("001").all()


def test_image_table_validation(tiny_release):
    path = tiny_release / "preparation" / "preprocessed_image_data" / "001.csv"
    table = pd.read_csv(path)
    table.drop(columns="overall_rating").to_csv(path, index=False)
    with pytest.raises(FergiError, match=r"001\.csv: missing column\(s\) overall_rating"):
        load_images(tiny_release)
    table.astype({"satisfied": object}).assign(satisfied="maybe").to_csv(path, index=False)
    with pytest.raises(FergiError, match=r"'maybe' in column 'satisfied' is not True/False"):
        load_images(tiny_release)
    table.astype({"PickScore": object}).assign(PickScore="x").to_csv(path, index=False)
    with pytest.raises(FergiError, match=r"value 'x' in column 'PickScore' is not a number"):
        load_images(tiny_release)


def test_images_without_rankings_or_scores(tiny_release):
    path = tiny_release / "preparation" / "preprocessed_image_data" / "001.csv"
    pd.read_csv(path).drop(columns=["rank_score", *SCORE_COLUMNS]).to_csv(path, index=False)
    images = load_images(tiny_release)
    assert images["rank_score"].isna().all()
    assert images["PickScore"].isna().all()


def test_invalid_json_is_named(tiny_release):
    (tiny_release / "preparation" / "invalid_images.json").write_text("{not json")
    with pytest.raises(FergiError, match=r"invalid_images\.json: invalid JSON"):
        load_invalid_images(tiny_release)


def test_infinite_value_names_the_file(tiny_release):
    path = _clip_path(tiny_release, image=2)
    table = pd.read_csv(path).astype({"AU12": object})
    table.loc[2, "AU12"] = "inf"
    table.to_csv(path, index=False)
    with pytest.raises(FergiError, match=r"reaction_clip_2_features\.csv: non-finite value inf in column 'AU12' \(data row 3\)"):
        load_frames(tiny_release)


def test_no_clips_of_the_requested_kind(tiny_release):
    for path in (tiny_release / "data" / "001" / "session_1").glob("reaction_*"):
        path.unlink()
    with pytest.raises(FergiError, match="no reaction_clip_<i>_features files"):
        load_frames(tiny_release, clips=["reaction"])


def test_image_table_not_utf8(tiny_release):
    path = tiny_release / "preparation" / "preprocessed_image_data" / "001.csv"
    path.write_bytes("session_index,image_index,overall_rating\n".encode("utf-16"))
    with pytest.raises(FergiError, match=r"001\.csv: not UTF-8 text"):
        load_images(tiny_release)
