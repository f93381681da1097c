"""Issue 20: AU features from OpenFace, py-feat and LibreFace outputs (``fergi import-features``).

Fixtures are written by ``_tool_outputs`` with each tool's real header (from the tools'
own code), a few rows each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fergi import FergiError
from fergi.au import import_feature_folder, import_features, ratios_from_head_pose, read_tool_output
from fergi.cli import main
from fergi.datasets import AU_NAMES, FRAME_COLUMNS, feature_provenance, load_frames
from tests.helpers.tool_outputs import (
    FERGI_TO_NUMBER,
    openface_columns,
    openface_table,
    pyfeat_table,
    release_as_openface,
    write_openface_csv,
)

N = 12


def _aus(n=N, top=2.0):
    return {au: np.linspace(0.0, top, n) * (1 + j / 20) for j, au in enumerate(AU_NAMES)}


def _known_landmarks() -> np.ndarray:
    """A turned head drawn by hand (pixels, y down): hand-computed ratios 0.65 and 0.4."""
    lm = np.zeros((68, 2))
    lm[:, 0], lm[:, 1] = 300.0, 200.0
    lm[36:42] = [250.0, 180.0]  # image-left eye centre
    lm[42:48] = [350.0, 180.0]  # image-right eye centre: eyes 100 px apart
    lm[48], lm[54] = [270.0, 270.0], [330.0, 270.0]  # mouth corners: the face is upright
    lm[31:36] = [300.0, 245.0]  # nostrils 65 px below the eye line: PIR = 65 / 100
    lm[0] = [230.0, 180.0]  # image-left edge 20 px left of the left eye
    lm[16] = [380.0, 180.0]  # image-right edge 30 px right of the right eye: YIR = 20 / 50
    return lm


# ----------------------------------------------------------------------------- OpenFace
def test_openface_fixture_maps_the_columns_and_computes_the_ratios_by_hand(tmp_path):
    table = openface_table(_aus(), fps=30.0)
    lm = _known_landmarks()
    for i in range(68):
        table[f"x_{i}"], table[f"y_{i}"] = lm[i, 0], lm[i, 1]
    table.loc[3, "success"] = 0  # OpenFace lost the face here
    table.loc[3, "confidence"] = 0.1
    path = write_openface_csv(table, tmp_path / "baseline_clip_1.csv")
    assert path.read_text().startswith("frame, face_id, timestamp, confidence, success, gaze_0_x")
    raw = read_tool_output(path)
    assert len(raw.columns) == 714 and "AU12_r" in raw.columns

    out = import_features(raw, "openface", name=str(path))
    assert list(out.columns) == list(FRAME_COLUMNS)
    assert out["frame"].tolist() == list(range(1, N + 1))
    face = np.arange(N) != 3
    assert np.allclose(out.loc[face, "pitch_indicative_ratio"], 0.65)
    assert np.allclose(out.loc[face, "yaw_indicative_ratio"], 0.4)
    assert np.allclose(out.loc[face, "face_detection_confidence_score"], 0.98)
    for au, n in FERGI_TO_NUMBER.items():
        assert np.allclose(out.loc[face, au], table.loc[face, f"AU{n:02d}_r"])
    # A frame without a face, as the release writes it.
    assert out.loc[3, "face_detection_confidence_score"] == 0
    assert (out.loc[3, list(FRAME_COLUMNS[3:])] == -1).all()
    assert np.allclose(out["timestamp"], np.arange(N) / 30.0)
    assert out.attrs["pose_ratios"] == "landmarks_68" and out.attrs["missing_aus"] == []


def test_openface_several_faces_keep_the_largest(tmp_path):
    columns = openface_columns(gaze=False, landmarks_3d=False, params=False)
    small = openface_table(_aus(6), columns=columns)
    big = openface_table({au: np.full(6, 4.0) for au in AU_NAMES}, columns=columns, pir=0.7, yir=0.55)
    for i in range(68):  # the second face twice the size of the first
        big[f"x_{i}"] = 2 * big[f"x_{i}"]
        big[f"y_{i}"] = 2 * big[f"y_{i}"]
    big["face_id"] = 1
    both = pd.concat([small, big]).sort_values(["frame", "face_id"], kind="stable")
    # FaceLandmarkVidMulti writes a row per face; in frame 4 only the small face is seen.
    both = both[~((both["frame"] == 4) & (both["face_id"] == 1))]
    path = write_openface_csv(both, tmp_path / "reaction_clip_1.csv")
    out = import_features(read_tool_output(path), "openface", name=str(path))
    assert len(out) == 6
    rest = out["frame"] != 4
    assert (out.loc[rest, "AU12"] == 4.0).all()
    assert np.allclose(out.loc[rest, "pitch_indicative_ratio"], 0.7)
    assert out.loc[out["frame"] == 4, "AU12"].item() == pytest.approx(small["AU12_r"].iloc[3])


def test_openface_without_landmarks_falls_back_to_head_pose(tmp_path):
    columns = openface_columns(gaze=False, landmarks_2d=False, landmarks_3d=False, params=False)
    table = openface_table(_aus(4), columns=columns)
    # Head tilted 10 degrees up (OpenFace: negative pose_Rx), then turned 30 degrees.
    table["pose_Rx"] = np.deg2rad([0.0, -10.0, 0.0, 0.0])
    table["pose_Ry"] = np.deg2rad([0.0, 0.0, 30.0, -30.0])
    path = write_openface_csv(table, tmp_path / "x.csv")
    out = import_features(read_tool_output(path), "openface", name="x.csv")
    assert out.attrs["pose_ratios"] == "head_pose_angles"
    pir, yir = out["pitch_indicative_ratio"].to_numpy(), out["yaw_indicative_ratio"].to_numpy()
    assert pir[0] == pytest.approx(0.70) and yir[0] == pytest.approx(0.5)
    assert pir[1] == pytest.approx(0.70 * np.cos(np.deg2rad(10)) - 0.30 * np.sin(np.deg2rad(10)))
    # 30 degrees of yaw leaves the paper's 0.3-0.7 either way; the sign does not matter.
    assert yir[2] > 0.7 and yir[3] < 0.3 and yir[2] - 0.5 == pytest.approx(0.5 - yir[3])
    assert ratios_from_head_pose(0.0, 13.0)[1] == pytest.approx(0.7, abs=0.005)


# ----------------------------------------------------------------------------- py-feat
def test_pyfeat_fixture_keeps_the_largest_face_and_needs_the_frame_rate(tmp_path):
    probabilities = {au: np.linspace(0.05, 0.95, 8) for au in AU_NAMES}
    table = pyfeat_table(probabilities, pir=0.62, yir=0.45, fps=25.0)
    other = table.iloc[[2, 5]].copy()  # a second, smaller face in frames 2 and 5
    other["FaceRectWidth"], other["FaceRectHeight"] = 60.0, 70.0
    other[[f"AU{n:02d}" for n in FERGI_TO_NUMBER.values()]] = 0.0
    table = pd.concat([table, other]).sort_values("frame", kind="stable")
    table.loc[table.index == 6, ["FaceScore", "FaceRectWidth", "FaceRectHeight"]] = np.nan  # no face
    table.loc[table.index == 6, [f"AU{n:02d}" for n in FERGI_TO_NUMBER.values()]] = np.nan
    path = tmp_path / "reaction_clip_2.csv"
    table.to_csv(path, index=False)
    assert path.read_text().startswith("FaceRectX,FaceRectY,FaceRectWidth,FaceRectHeight,FaceScore,x_0,")

    with pytest.raises(FergiError, match=r"reaction_clip_2.csv: header, column 'frame': .*--fps"):
        import_features(read_tool_output(path), "pyfeat", name=str(path))
    out = import_features(read_tool_output(path), "pyfeat", fps=25.0, name=str(path))
    assert len(out) == 8
    assert np.allclose(out["timestamp"], np.arange(8) / 25.0)
    face = out["frame"] != 7
    assert np.allclose(out.loc[face, "AU12"], probabilities["AU12"][face.to_numpy()])
    assert np.allclose(out.loc[face, "pitch_indicative_ratio"], 0.62)
    assert np.allclose(out.loc[face, "yaw_indicative_ratio"], 0.45)
    assert out.loc[~face, "face_detection_confidence_score"].item() == 0
    assert out.attrs["au_scale"] == "pyfeat-probability"
    # approx_time (whole seconds) contradicts a wrong frame rate.
    with pytest.raises(FergiError, match=r"row \d+, column 'approx_time'"):
        import_features(read_tool_output(path), "pyfeat", fps=5.0, name=str(path))


# ----------------------------------------------------------------------------- LibreFace
@pytest.fixture(scope="module")
def astronaut_mesh():
    from skimage import data

    from fergi.face import detect_landmarks

    return detect_landmarks(data.astronaut())[:, :2]


def test_libreface_fixture_uses_facemesh_ratios_and_restores_dropped_frames(tmp_path, astronaut_mesh):
    from fergi.face import pose_ratios
    from tests.helpers.tool_outputs import libreface_table

    frames = np.array([0, 1, 2, 4, 5])  # LibreFace dropped frame 3 (no face found)
    mesh = np.stack([astronaut_mesh + [k, 0.5 * k] for k in range(5)])
    intensities = {au: np.linspace(0.0, 3.0, 5) for au in AU_NAMES}
    table = libreface_table(intensities, mesh, frame_size=(512, 512), frames=frames)
    path = tmp_path / "baseline_clip_3.csv"
    table.to_csv(path, index=False)
    assert path.read_text().startswith("frame_idx,frame_time_in_ms,pitch,yaw,roll,lm_mp_0_x,lm_mp_0_y,lm_mp_0_z,")
    with pytest.raises(FergiError, match=r"column 'lm_mp_0_x': .*frame size"):
        import_features(read_tool_output(path), "libreface", name=str(path))
    out = import_features(read_tool_output(path), "libreface", frame_size=(512, 512), name=str(path))
    assert len(out) == 6 and out.attrs["pose_ratios"] == "facemesh_478"
    pir, yir = pose_ratios(mesh)
    kept = out["frame"] != 4
    assert np.allclose(out.loc[kept, "pitch_indicative_ratio"], pir, atol=1e-6)
    assert np.allclose(out.loc[kept, "yaw_indicative_ratio"], yir, atol=1e-6)
    assert 0.55 <= pir.mean() <= 0.85 and 0.3 <= yir.mean() <= 0.7  # a frontal photograph
    assert np.allclose(out.loc[kept, "AU4"], intensities["AU4"])
    assert out.loc[~kept, "face_detection_confidence_score"].item() == 0
    assert out.loc[~kept, "AU4"].item() == -1
    assert np.allclose(out["timestamp"], np.arange(6) / 30.0)


# ----------------------------------------------------------------------------- validation
def _openface_file(tmp_path, name="bad.csv", **changes):
    table = openface_table(_aus(), columns=openface_columns(gaze=False, landmarks_3d=False, params=False))
    for key, value in changes.items():
        table[key] = value
    return write_openface_csv(table, tmp_path / name)


def _one_line_error(path, source="openface", **kwargs) -> str:
    with pytest.raises(FergiError) as info:
        import_features(read_tool_output(path), source, name=str(path), **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_missing_column_is_named(tmp_path):
    path = _openface_file(tmp_path)
    raw = read_tool_output(path).drop(columns=["confidence"])
    with pytest.raises(FergiError, match=r"bad.csv: header, column 'confidence': missing"):
        import_features(raw, "openface", name=str(path))
    raw = read_tool_output(path).drop(columns=["y_67"])
    with pytest.raises(FergiError, match=r"header, column 'y_67': missing"):
        import_features(raw, "openface", name=str(path))


def test_non_monotonic_timestamps_name_the_row(tmp_path):
    ts = np.arange(N) / 30.0
    ts[7] = ts[5]
    message = _one_line_error(_openface_file(tmp_path, timestamp=ts))
    assert "row 8, column 'timestamp'" in message and "must increase" in message


def test_frame_rate_far_from_the_clips(tmp_path):
    slow = _openface_file(tmp_path, timestamp=np.arange(N) / 15.0)
    message = _one_line_error(slow, fps=30.0)
    assert "row 2, column 'timestamp'" in message and "15 fps" in message and "30 fps" in message
    assert len(import_features(read_tool_output(slow), "openface", fps=15.0, name="x")) == N
    # A dropped frame halfway (one step of 2/30 s) is named by its row.
    ts = np.arange(N) / 30.0
    ts[6:] += 1.0
    message = _one_line_error(_openface_file(tmp_path, "gap.csv", timestamp=ts), fps=30.0)
    assert "gap.csv: row 7, column 'timestamp'" in message
    # Milliseconds are not seconds, whatever the clip.
    message = _one_line_error(_openface_file(tmp_path, "ms.csv", timestamp=np.arange(N) * 33.3))
    assert "row 2, column 'timestamp'" in message and "seconds" in message


def test_au_values_outside_the_tools_range(tmp_path):
    values = np.linspace(0, 2, N)
    values[9] = 5.7
    message = _one_line_error(_openface_file(tmp_path, AU12_r=values))
    assert "row 10, column 'AU12_r'" in message and "5.7" in message and "0-5" in message
    table = pyfeat_table({au: np.full(5, 0.5) for au in AU_NAMES})
    table.loc[2, "AU04"] = -0.2
    path = tmp_path / "pyfeat.csv"
    table.to_csv(path, index=False)
    message = _one_line_error(path, "pyfeat", fps=30.0)
    assert "row 3, column 'AU04'" in message and "-0.2" in message


# ----------------------------------------------------------------------------- folders + CLI
def _release_subset(fergi_public, release_frames, participants, sessions=None):
    frames = release_frames[release_frames["participant"].isin(participants)]
    if sessions is not None:
        frames = frames[frames["session"].isin(sessions)]
    return frames


def _preparation(fergi_public, root: Path, participants):
    prep = root / "preparation"
    (prep / "preprocessed_image_data").mkdir(parents=True)
    valid = json.loads((fergi_public / "preparation" / "valid_sessions.json").read_text())
    invalid = json.loads((fergi_public / "preparation" / "invalid_images.json").read_text())
    (prep / "valid_sessions.json").write_text(json.dumps({p: valid[p] for p in participants}))
    (prep / "invalid_images.json").write_text(json.dumps({p: invalid.get(p, {}) for p in participants}))
    for p in participants:
        shutil.copy(fergi_public / "preparation" / "preprocessed_image_data" / f"{p}.csv",
                    prep / "preprocessed_image_data" / f"{p}.csv")


def test_folder_import_meta_file_and_a_bad_file_skipped(fergi_public, release_frames, tmp_path, capsys):
    frames = _release_subset(fergi_public, release_frames, ["001"], sessions=[1, 2])
    src = tmp_path / "openface"
    release_as_openface(frames, src)
    bad = src / "001" / "session_2" / "reaction_clip_3.csv"
    text = bad.read_text().splitlines()
    text[5], text[6] = text[6], text[5]  # two rows swapped: timestamps go back
    bad.write_text("\n".join(text) + "\n")
    out = tmp_path / "study"
    code = main(["import-features", str(src), "--from", "openface", "--out", str(out),
                 "--estimator-version", "2.2.0"])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "reaction_clip_3.csv: row 6, column 'timestamp'" in errors[0]
    assert "Imported 19 clip(s)" in captured.out
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_features.csv"))
    assert len(written) == 19 and "data/001/session_1/baseline_clip_1_features.csv" in written

    meta = json.loads((out / "features_meta.json").read_text())
    assert meta["estimator"] == "openface" and meta["estimator_version"] == "2.2.0"
    assert meta["au_scale"] == "OpenFace AU intensity (AUxx_r), 0-5"
    assert meta["normalization_required"] == "baseline_median"
    assert meta["pose_ratios"] == "landmarks_68" and meta["missing_aus"] == []
    entry = meta["sources"]["data/001/session_1/baseline_clip_1_features.csv"]
    source = src / "001" / "session_1" / "baseline_clip_1.csv"
    assert entry == {"file": "001/session_1/baseline_clip_1.csv",
                     "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    provenance = feature_provenance(out)
    assert provenance.estimator == "openface" and provenance.normalization_required == "baseline_median"
    # The written files are the release's schema, read by the ordinary loader.
    loaded = load_frames(out)
    assert len(loaded) == len(frames) - len(frames[(frames["session"] == 2) & (frames["image"] == 3)
                                                  & (frames["clip"] == "reaction")])


def test_mapping_file_names_other_outputs(tmp_path):
    src = tmp_path / "runs"
    for k, name in enumerate(["take_a.csv", "take_b.csv"]):
        table = pyfeat_table({au: np.full(10, 0.3 + 0.1 * k) for au in AU_NAMES}, fps=25.0)
        src.mkdir(exist_ok=True)
        table.to_csv(src / name, index=False)
    mapping = tmp_path / "map.csv"
    mapping.write_text("file,participant,session,image,clip,fps\n"
                       "take_a.csv,P1,1,1,baseline,25\ntake_b.csv,P1,1,1,reaction,25\n")
    summary = import_feature_folder(src, "pyfeat", tmp_path / "out", mapping=mapping)
    assert [p.name for p in summary.written] == ["baseline_clip_1_features.csv", "reaction_clip_1_features.csv"]
    assert summary.au_scale == "py-feat AU probability, 0-1"
    frames = load_frames(tmp_path / "out")
    assert np.allclose(frames.loc[frames["clip"] == "reaction", "AU12"], 0.4)
    bad = tmp_path / "bad_map.csv"
    bad.write_text("file,participant,session,clip\ntake_a.csv,P1,1,baseline\n")
    with pytest.raises(FergiError, match=r"bad_map.csv: header, column 'image': missing"):
        import_feature_folder(src, "pyfeat", tmp_path / "out2", mapping=bad)


@pytest.fixture(scope="module")
def imported_study(fergi_public, release_frames, tmp_path_factory):
    """Participants 001 and 005 of the release as an OpenFace import (with preparation/)."""
    people = ["001", "005"]
    root = tmp_path_factory.mktemp("imported")
    src = root / "openface"
    release_as_openface(_release_subset(fergi_public, release_frames, people), src)
    _preparation(fergi_public, src, people)
    assert main(["import-features", str(src), "--from", "openface", "--out", str(root / "study")]) == 0
    return root / "study"


@pytest.mark.slow  # 380 clips imported, then annotate and reproduce (15-60 s)
def test_chain_annotate_and_reproduce_on_imported_features(imported_study, release_table, tmp_path, capsys):
    from fergi.preference import RAW_MODEL, default_model_path

    labels = tmp_path / "labels.jsonl"
    assert main(["annotate", "--data", str(imported_study), "--out", str(labels)]) == 0
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert rows and {r["normalization"] for r in rows} == {"baseline_median"}
    assert "Features: openface (OpenFace AU intensity (AUxx_r), 0-5, imported)" in capsys.readouterr().out
    # A raw-scale model refuses imported features, in one line.
    raw = str(default_model_path(RAW_MODEL))
    assert main(["annotate", "--data", str(imported_study), "--model", raw, "--out", str(labels)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "openface" in err and "ir50-fergi" in err
    results = tmp_path / "results"
    assert main(["reproduce", "--data", str(imported_study), "--out", str(results), "--no-figures"]) == 0
    assert "Sec. 6.1" in capsys.readouterr().out
    document = json.loads((results / "results.json").read_text())
    # The frame filter saw the release's own values: the same clips are valid.
    assert document["participants"]["all"] == 2
    assert document["n_reaction_clips_valid"] == int(release_table["participant"].isin(["001", "005"]).sum())
    assert set(document["statistics"]) and "Table 1" not in document.get("preference_skipped", "")


def test_annotate_refuses_a_model_that_reads_a_missing_au(fergi_public, release_frames, tmp_path, capsys, caplog):
    from fergi.datasets import load_images
    from fergi.preference import (
        AnnotationModel,
        Linear12Valence,
        reaction_data_from_frames,
        save_model,
    )

    people = ["001", "005"]
    frames = _release_subset(fergi_public, release_frames, people, sessions=[1, 2, 3])
    src = tmp_path / "openface"
    release_as_openface(frames, src)
    for path in src.rglob("*.csv"):  # an OpenFace without AU26 (as some versions are)
        table = read_tool_output(path).drop(columns=["AU26_r", "AU26_c"])
        table.to_csv(path, index=False)
    out = tmp_path / "study"
    with caplog.at_level(logging.WARNING):
        summary = import_feature_folder(src, "openface", out)
    assert summary.missing_aus == ["AU26"]
    warnings = [r.getMessage() for r in caplog.records if "no AU26" in r.getMessage()]
    assert len(warnings) == 1 and f"{len(summary.written)} file(s)" in warnings[0]  # once
    assert load_frames(out)["AU26"].isna().all()
    assert json.loads((out / "features_meta.json").read_text())["missing_aus"] == ["AU26"]
    # A linear model over all 12 AUs (fitted on the release) is refused ...
    linear = AnnotationModel(Linear12Valence(c=1.0), fallback="none", integrate=False)
    images = load_images(fergi_public)
    linear.fit(reaction_data_from_frames(frames, images[images["participant"].isin(people)]))
    model = save_model(linear, tmp_path / "linear12.json")
    labels = tmp_path / "labels.jsonl"
    assert main(["annotate", "--data", str(out), "--model", str(model), "--out", str(labels)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "no AU26" in err and "AU12" in err
    assert not labels.exists()
    # ... the default model (AU4 and AU12) is not.
    assert main(["annotate", "--data", str(out), "--out", str(labels)]) == 0


# ----------------------------------------------------------------------------- geometry vs 68
#: FaceMesh points at the places of the 68 points the ratios read (fergi.face._pose's
#: correspondence, plus the outer mouth corners 61 and 291 for the face frame).
MESH_AT_68 = {0: 234, 16: 454, 31: 98, 32: 97, 33: 2, 34: 326, 35: 327,
              36: 33, 37: 160, 38: 158, 39: 133, 40: 153, 41: 144,
              42: 362, 43: 385, 44: 387, 45: 263, 46: 373, 47: 380, 48: 61, 54: 291}
MESH_AT_68_EYE_LEFT = [33, 160, 158, 133, 153, 144]
MESH_AT_68_EYE_RIGHT = [362, 385, 387, 263, 373, 380]
#: Tolerance between the geometry estimator's ratios and the 68-point ones on the same video.
#: Both are measured in the authors' oriented face frame from the same points, so they
#: differ only by the CSV's rounding of the landmark table (1.4e-7 measured).
GEOMETRY_TOLERANCE = 1e-5


@pytest.mark.slow
def test_geometry_ratios_agree_with_68_point_ratios_on_the_same_video(tmp_path):
    from skimage import data

    from fergi.au import extract_features
    from fergi.face import FaceAnalyzer, oriented_pose_ratios, write_reaction_video
    from fergi.video import read_video

    video = write_reaction_video(tmp_path / "reaction_clip_1.mp4", data.astronaut(), neutral_s=0.3,
                                 expression_s=0.7, smile=0.8)
    with FaceAnalyzer() as analyzer:
        geometry = extract_features(video, estimator="geometry", analyzer=analyzer)
        frames = read_video(video)
        mesh = np.stack([analyzer.process(f).landmarks[:, :2] for f in frames.frames])
    lm68 = np.repeat(mesh[:, [1]], 68, axis=1)  # points the ratios do not read: the nose tip
    for i, j in MESH_AT_68.items():
        lm68[:, i] = mesh[:, j]
    table = openface_table({au: np.zeros(len(mesh)) for au in AU_NAMES},
                           columns=openface_columns(gaze=False, landmarks_3d=False, params=False))
    table["timestamp"] = frames.timestamps
    for i in range(68):
        table[f"x_{i}"], table[f"y_{i}"] = lm68[:, i, 0], lm68[:, i, 1]
    path = write_openface_csv(table, tmp_path / "openface.csv")
    imported = import_features(read_tool_output(path), "openface", fps=30.0, name=str(path))

    # The import computes the authors' oriented-frame ratios of these points ...
    pir, yir = oriented_pose_ratios(
        eye_left=mesh[:, MESH_AT_68_EYE_LEFT].mean(axis=1), eye_right=mesh[:, MESH_AT_68_EYE_RIGHT].mean(axis=1),
        mouth_left=mesh[:, 61], mouth_right=mesh[:, 291], nostrils=mesh[:, [98, 97, 2, 326, 327]].mean(axis=1),
        edge_left=mesh[:, 234], edge_right=mesh[:, 454])
    assert np.allclose(imported["pitch_indicative_ratio"], pir, atol=1e-9)
    assert np.allclose(imported["yaw_indicative_ratio"], yir, atol=1e-9)
    # ... which agree with the geometry estimator's FaceMesh ratios on the same video.
    for column in ("pitch_indicative_ratio", "yaw_indicative_ratio"):
        gap = np.abs(imported[column].to_numpy() - geometry[column].to_numpy()).max()
        print(f"{column}: max |68-point - geometry| = {gap:.2e}")
        assert gap <= GEOMETRY_TOLERANCE


# ----------------------------------------------------------------------------- round trip
@pytest.mark.slow
def test_release_round_trip_through_openface_files(fergi_public, release_frames, tmp_path, capsys):
    """The whole release as OpenFace CSVs (AUs rescaled per participant and AU, landmarks
    built to give its ratios), imported: the same baseline-median labels, the same Table 1."""
    import time

    from fergi.datasets import load_images, load_invalid_images
    from fergi.preference import (
        AnnotationModel,
        annotate_reactions,
        evaluate_lopo,
        load_model,
        reaction_data_from_frames,
    )

    src = tmp_path / "openface"
    t0 = time.perf_counter()
    factors = release_as_openface(release_frames, src, seed=20)
    assert factors["factor"].nunique() > 50  # a factor per participant and AU
    t1 = time.perf_counter()
    out = tmp_path / "study"
    summary = import_feature_folder(src, "openface", out)
    assert not summary.failed and len(summary.written) == 5760
    with capsys.disabled():
        print(f"\nround trip: wrote 5760 OpenFace files in {t1 - t0:.0f} s, imported them in "
              f"{time.perf_counter() - t1:.0f} s")

    imported = load_frames(out)
    same = ["frame", "timestamp", "face_detection_confidence_score", "pitch_indicative_ratio",
            "yaw_indicative_ratio"]
    for column in same:  # the paper's frame filter sees exactly the release's values
        assert np.array_equal(imported[column].to_numpy(), release_frames[column].to_numpy()), column

    images, invalid = load_images(fergi_public), load_invalid_images(fergi_public)
    release = reaction_data_from_frames(release_frames, images, invalid=invalid,
                                        provenance=feature_provenance(fergi_public), source="release")
    ours = reaction_data_from_frames(imported, images, invalid=invalid,
                                     provenance=feature_provenance(out), source=str(out))
    model = load_model()
    a = annotate_reactions(release, model)
    b = annotate_reactions(ours, model)
    keys = ["participant", "session", "image_a", "image_b"]
    a, b = a.sort_values(keys, ignore_index=True), b.sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(a[keys], b[keys])
    ranks = images.set_index(["participant", "session", "image"])["rank_score"]
    ra = ranks.reindex(pd.MultiIndex.from_arrays([a["participant"], a["session"], a["image_a"]])).to_numpy()
    rb = ranks.reindex(pd.MultiIndex.from_arrays([a["participant"], a["session"], a["image_b"]])).to_numpy()
    ranked = np.isfinite(ra) & np.isfinite(rb) & (ra != rb)
    identical = (a["preferred"].astype("Int64").fillna(-1).to_numpy() == b["preferred"].astype("Int64").fillna(-1).to_numpy()) & (
        a["confident"].to_numpy() == b["confident"].to_numpy())
    with capsys.disabled():
        print(f"round trip: {int(identical[ranked].sum())} of {int(ranked.sum())} ranked pairs identical "
              f"({int(identical.sum())} of {len(a)} labelled pairs)")
    assert ranked.sum() == 3734 and identical.all()

    # Table 1 with the scale-free model, on the 30 screened participants.
    screened = [p for p in release.participants if p not in ("002", "004", "039")]
    table1 = [evaluate_lopo(AnnotationModel(), data.subset(screened), n_boot=20)["selective"]
              for data in (release, ours)]
    with capsys.disabled():
        print(f"Table 1 (scale-free AUcomb): release {table1[0]['accuracy']:.2f} % "
              f"(n={table1[0]['n']}), imported {table1[1]['accuracy']:.2f} % (n={table1[1]['n']})")
    assert abs(table1[0]["accuracy"] - table1[1]["accuracy"]) <= 0.1
