"""Session processing end to end: a synthetic 5-image webcam recording to labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage import data

from fergi import FergiError
from fergi.datasets import FRAME_COLUMNS
from fergi.study.processing import STAGES, StageError, process_session_media
from fergi.video import read_video, write_video

synthetic = pytest.importorskip("fergi.face._synthetic")

# a whole synthetic session through face analysis: about 20 s on 2 cores
pytestmark = pytest.mark.slow

BASELINE_S = 1.0
REACTION_S = 1.0
GAP_S = 0.3  # the annotation survey between images
# image index -> (smile, frown) shown after the image appears
PLAN = {1: (1.0, 0.0), 2: (0.0, 1.0), 3: (0.0, 0.0), 4: (0.6, 0.0), 5: (0.0, 0.6)}


def _fixed_model():
    """AUcomb with fixed parameters: usable without fitting or the shipped model file."""
    from fergi.preference import AUcombValence

    return AUcombValence(k=1.0, w_au4=0.5, threshold=0.1)


def _default_model_available() -> bool:
    try:
        from fergi.preference import annotate_pairs, load_model  # noqa: F401

        load_model(None)
    except (ImportError, FergiError):
        return False
    return True


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A variable-frame-rate VP9 'webcam' recording of a 5-image session and its events.

    Each image: 1 s neutral face (baseline), 1 s reaction (a synthetic smile or
    frown warp of a real face, or none), 0.3 s neutral (survey). Like MediaRecorder,
    frames come at jittered times and some are dropped.
    """
    face = data.astronaut()
    frames, events = [], []
    for image, (smile, frown) in PLAN.items():
        start = len(frames) / 30
        frames += synthetic.reaction_frames(
            face,
            neutral_s=BASELINE_S,
            expression_s=REACTION_S,
            smile=smile,
            frown=frown,
            size=(320, 240),
        )
        frames += synthetic.reaction_frames(face, neutral_s=GAP_S, expression_s=0, size=(320, 240))
        # the page's events come a few ms after the frame boundaries
        events += [
            {"image_index": image, "kind": "baseline_start", "video_time": start + 0.012},
            {"image_index": image, "kind": "image_shown", "video_time": start + BASELINE_S + 0.012},
            {
                "image_index": image,
                "kind": "image_hidden",
                "video_time": start + BASELINE_S + REACTION_S + 0.01,
            },
        ]
    rng = np.random.default_rng(0)
    keep = [i for i in range(len(frames)) if i == 0 or rng.random() > 0.15]
    times = np.array([0.0] + [i / 30 + rng.uniform(0, 0.004) for i in keep[1:]])
    root = tmp_path_factory.mktemp("session")
    recording = write_video(root / "upload.webm", [frames[i] for i in keep], timestamps=times)
    return recording, events


@pytest.fixture(scope="module")
def processed(session, tmp_path_factory):
    recording, events = session
    work = tmp_path_factory.mktemp("work")
    statuses = []
    error = None
    result = None
    try:
        result = process_session_media(
            recording,
            events,
            work,
            model=_fixed_model(),
            on_stage=lambda name, status: statuses.append((name, status)),
            baseline_s=BASELINE_S,
            reaction_s=REACTION_S,
            participant="901",
            session=3,
            invalid_images=[3],
        )
    except StageError as exc:
        error = exc
    return {"result": result, "error": error, "statuses": statuses, "work": work}


def test_stages_run_in_order(processed):
    names = ["standardize", "clips", "features", "activations", "labels"]
    assert set(names) <= set(STAGES)
    assert processed["statuses"] == [(n, s) for n in names for s in ("running", "done")]


def test_clips_and_per_frame_features(processed):
    work = processed["work"]
    clips_dir, features_dir = work / "clips", work / "features"
    for image in PLAN:
        for clip in ("baseline", "reaction"):
            video = read_video(clips_dir / f"{clip}_clip_{image}.mp4", fps=None)
            assert len(video) == 30  # 1 s at 30 fps
            np.testing.assert_allclose(np.diff(video.timestamps), 1 / 30, atol=1e-3)
            table = pd.read_csv(features_dir / f"{clip}_clip_{image}_features.csv")
            assert tuple(table.columns) == FRAME_COLUMNS
            assert table["frame"].tolist() == list(range(1, 31))
            assert (table["face_detection_confidence_score"] > 0.5).all()
    assert (work / "recording_30fps.mp4").is_file()


def test_activation_values_follow_the_expressions(processed):
    work = processed["work"]
    act = processed["result"].activations
    # exactly what the saved per-frame files give (as after an export)
    from fergi.features import compute_activation_values

    saved = pd.concat(
        [
            pd.read_csv(work / "features" / f"{clip}_clip_{image}_features.csv").assign(
                participant="901", session=3, image=image, clip=clip
            )
            for image in PLAN
            for clip in ("baseline", "reaction")
        ]
    )
    pd.testing.assert_frame_equal(
        compute_activation_values(saved).drop(columns=["participant", "session", "image", "clip"]),
        act.drop(columns=["participant", "session", "image", "clip"]),
    )
    assert len(act) == 10 and act["clip_valid"].all()
    assert set(act["participant"]) == {"901"} and set(act["session"]) == {3}
    reaction = act[act["clip"] == "reaction"].set_index("image")
    au12 = reaction["AU12_activation_value"]
    au4 = reaction["AU4_activation_value"]
    # the smiles raise AU12 far above the other reactions; the strong frown raises AU4
    assert min(au12[1], au12[4]) > 3 * max(au12[2], au12[3], au12[5]) and au12[1] > 0.5
    assert au4[2] > 2 * max(au4[1], au4[3], au4[4]) and au4[2] > 0.3


def test_labels(processed):
    assert processed["error"] is None
    labels = processed["result"].labels
    for column in (
        "participant",
        "session",
        "image_a",
        "image_b",
        "preferred",
        "score_difference",
        "confident",
    ):
        assert column in labels.columns
    # image 3 was flagged invalid (all black): it is not in any pair
    assert not ({3} & (set(labels["image_a"]) | set(labels["image_b"])))
    assert set(labels["participant"].astype(str)) == {"901"} and set(labels["session"]) == {3}
    pairs = {
        frozenset((int(a), int(b))): p
        for a, b, p in labels[["image_a", "image_b", "preferred"]].itertuples(index=False)
    }
    assert set(pairs) == {frozenset(p) for p in [(1, 2), (1, 4), (1, 5), (2, 4), (2, 5), (4, 5)]}
    # a smile beats a frown, whatever the order of the pair
    for smile in (1, 4):
        for frown in (2, 5):
            assert int(pairs[frozenset((smile, frown))]) == smile


def test_labels_with_the_default_model(processed):
    from fergi.study.processing._tables import _labels_stage

    activations = processed["result"].activations
    if not _default_model_available():
        with pytest.raises(FergiError, match="annotation model unavailable"):
            _labels_stage(activations, model=None, invalid_images=())
        return
    labels = _labels_stage(activations, model=None, invalid_images=())
    assert len(labels) == 10  # all pairs of the 5 images
    pairs = {
        frozenset((int(a), int(b))): p
        for a, b, p in labels[["image_a", "image_b", "preferred"]].itertuples(index=False)
    }
    assert int(pairs[frozenset((1, 2))]) == 1


def test_default_labels_use_the_session_baselines_or_the_fallback(processed):
    """The study labels each session in baseline units of its own baseline clips; with
    fewer than 3 valid baseline clips, the quantile fallback labels it from its frames."""
    from fergi.study.processing._tables import _frames_table, _labels_stage, session_provenance

    result = processed["result"]
    frames = _frames_table(result.frames, participant="901", session=3)
    provenance = session_provenance("geometry")
    labels = _labels_stage(result.activations, model=None, invalid_images=[3], frames=frames,
                           provenance=provenance)
    assert set(labels["normalization"]) == {"baseline_median"} and len(labels) == 6
    act = result.activations.copy()
    broken = (act["clip"] == "baseline") & act["image"].isin([1, 2, 4])
    act.loc[broken, "clip_valid"] = False
    fallback = _labels_stage(act, model=None, invalid_images=[3], frames=frames,
                             provenance=provenance)
    assert set(fallback["normalization"]) == {"quantile"} and len(fallback) == 6
    # A smile still beats a frown whichever model labels the pair.
    for table in (labels, fallback):
        pairs = {frozenset((int(a), int(b))): int(p)
                 for a, b, p in table[["image_a", "image_b", "preferred"]].itertuples(index=False)}
        assert pairs[frozenset((1, 2))] == 1 and pairs[frozenset((4, 5))] == 4


def test_too_few_valid_images_give_no_labels(processed):
    from fergi.study.processing._tables import LABEL_COLUMNS, _labels_stage

    labels = _labels_stage(
        processed["result"].activations, model=_fixed_model(), invalid_images=[1, 2, 3, 4]
    )
    assert len(labels) == 0 and tuple(labels.columns) == LABEL_COLUMNS


def test_resume_reuses_up_to_date_outputs(session, processed):
    recording, events = session
    work = processed["work"]
    outputs = [
        work / "recording_30fps.mp4",
        work / "clips" / "reaction_clip_1.mp4",
        work / "features" / "reaction_clip_1_features.csv",
    ]
    before = [p.stat().st_mtime_ns for p in outputs]
    statuses = []
    result = process_session_media(
        recording,
        events,
        work,
        model=_fixed_model(),
        baseline_s=BASELINE_S,
        reaction_s=REACTION_S,
        resume=True,
        participant="901",
        session=3,
        invalid_images=[3],
        on_stage=lambda name, status: statuses.append((name, status)),
    )
    # nothing was redone: same files, same times, same results
    assert [p.stat().st_mtime_ns for p in outputs] == before
    assert [s for s in statuses if s[1] == "done"] == [
        (name, "done") for name in ("standardize", "clips", "features", "activations", "labels")
    ]
    pd.testing.assert_frame_equal(result.activations, processed["result"].activations)
    pd.testing.assert_frame_equal(result.labels, processed["result"].labels)
    # without resume, the stages run again (for image 1 only, to keep this test short)
    image_1 = [e for e in events if e["image_index"] == 1]
    process_session_media(
        recording, image_1, work, model=_fixed_model(), baseline_s=BASELINE_S, reaction_s=REACTION_S
    )
    assert outputs[2].stat().st_mtime_ns > before[2]


def test_chunks_are_assembled_first(session, tmp_path):
    recording, events = session
    raw = recording.read_bytes()
    chunks = []
    for i, (a, b) in enumerate([(0, 100), (100, len(raw) // 2), (len(raw) // 2, len(raw))]):
        chunk = tmp_path / f"{i}.part"
        chunk.write_bytes(raw[a:b])
        chunks.append(chunk)
    statuses = []
    # events of image 9 only, which lies beyond the recording: fails at the clips stage
    with pytest.raises(StageError, match="stage 'clips' failed: .*holds no complete image") as info:
        process_session_media(
            chunks,
            [
                {"image_index": 9, "kind": "baseline_start", "video_time": 100.0},
                {"image_index": 9, "kind": "image_shown", "video_time": 101.0},
            ],
            tmp_path / "work",
            on_stage=lambda name, status: statuses.append((name, status)),
        )
    assert info.value.stage == "clips" and isinstance(info.value, FergiError)
    assert statuses == [
        ("assemble", "running"),
        ("assemble", "done"),
        ("standardize", "running"),
        ("standardize", "done"),
        ("clips", "running"),
        ("clips", "failed"),
    ]
    assert (tmp_path / "work" / "recording.webm").read_bytes() == raw
    assert (tmp_path / "work" / "recording_30fps.mp4").is_file()
    assert all(c.is_file() for c in chunks)


def test_corrupt_recording_fails_at_standardize_and_keeps_it(tmp_path):
    bad = tmp_path / "upload.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + b"garbage" * 300)
    statuses = []
    with pytest.raises(StageError, match=r"stage 'standardize' failed: .*upload.webm") as info:
        process_session_media(
            bad,
            [{"image_index": 1, "kind": "baseline_start", "video_time": 0.0}],
            tmp_path / "work",
            on_stage=lambda name, status: statuses.append((name, status)),
        )
    assert info.value.stage == "standardize"
    assert "\n" not in str(info.value)
    assert statuses == [("standardize", "running"), ("standardize", "failed")]
    assert bad.is_file() and bad.stat().st_size > 0
    assert not (tmp_path / "work" / "recording_30fps.mp4").exists()


def test_malformed_events_fail_at_clips(session, tmp_path):
    recording, _ = session
    with pytest.raises(StageError, match="stage 'clips' failed: event 1 .*unknown kind"):
        process_session_media(
            recording, [{"image_index": 1, "kind": "start", "video_time": 0.0}], tmp_path / "w"
        )
    assert (tmp_path / "w" / "recording_30fps.mp4").is_file()
