"""The admin's science API: AU curves from the stored feature files, clip validity,
labelled pairs, and the study overview with the running agreement and its CI."""

from __future__ import annotations

import datetime as dt
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fergi.datasets import AU_NAMES
from fergi.features import compute_activation_values, frame_validity
from fergi.study import create_app
from fergi.study.processing import binomial_ci, clip_reasons, clip_valid, validity_rules
from fergi.study.store import Clip, Label, StudySession
from tests.helpers.study import (
    ADMIN,
    ANSWER,
    PRESENTATIONS,
    WEBM_HEAD,
    Participant,
    fake_features,
    finished_session,
    make_settings,
    processed_session,
    ready_participant,
)

FPS = 30
def make_recording(folder):
    """A VP9 webm like the browser's: 3 s neutral, then a smile, 5.5 s in all."""
    from skimage import data

    from fergi.face import write_reaction_video

    return write_reaction_video(folder / "recording.webm", data.astronaut(), neutral_s=3.0, expression_s=2.5, smile=1.0)


def processed_settings(tmp_path, **overrides):
    return make_settings(
        tmp_path, n_images=len(PRESENTATIONS), baseline_s=1.0, present_s=1.0, fps=FPS, **overrides
    )


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """One processed session on a module-wide app: ``(client, app, participant)``."""
    tmp = tmp_path_factory.mktemp("admin")
    recording = make_recording(tmp)
    app = create_app(processed_settings(tmp))
    with TestClient(app) as client:
        p = processed_session(client, app, recording)
        yield client, app, p


def _csv(app, session_id: int, clip: str, image: int) -> pd.DataFrame:
    return pd.read_csv(app.state.store.features_dir(session_id) / f"{clip}_clip_{image}_features.csv")


@pytest.mark.slow
def test_curves_are_the_stored_feature_files_on_the_onset_time_axis(processed):
    client, app, p = processed
    response = client.get(f"/api/admin/sessions/{p.id}/science", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["aus"] == ["AU4", "AU12"] and body["available_aus"] == list(AU_NAMES)
    assert body["rules"] == validity_rules() and body["rules"]["min_valid_share"] == 0.8
    assert [img["index"] for img in body["images"]] == [1, 2, 3]
    assert body["ranking"] == [2, 1, 3]
    with app.state.sessionmaker() as db:
        rows = {(c.image_index, c.clip): c for c in db.get(StudySession, p.id).clips}
    for image, start in PRESENTATIONS:
        entry = body["images"][image - 1]
        assert entry["rank"] == [2, 1, 3].index(image) + 1
        for kind in ("baseline", "reaction"):
            clip = entry["clips"][kind]
            table = _csv(app, p.id, kind, image)
            # The clip's first frame on the 30 fps grid, relative to the image onset (start + 1 s).
            first = math.floor((start + (1.0 if kind == "reaction" else 0.0)) * FPS + 1e-9) / FPS
            assert clip["start_s"] == pytest.approx(first - (start + 1.0), abs=1e-6)
            curves = clip["curves"]
            assert len(curves["t"]) == len(table) == clip["n_frames"] == rows[(image, kind)].n_frames
            np.testing.assert_allclose(curves["t"], clip["start_s"] + table["timestamp"], atol=1e-4)
            for au in ("AU4", "AU12"):
                expected = [None if pd.isna(v) else float(v) for v in table[au]]
                assert curves["values"][au] == pytest.approx(expected)
            assert curves["valid"] == frame_validity(table).tolist()
            assert all((why is None) == ok for why, ok in zip(curves["invalid_why"], curves["valid"], strict=True))
            # The activation values are the stored ones, and those are the CSV's.
            stored = rows[(image, kind)].activations
            recomputed = compute_activation_values(table).iloc[0]
            for au in AU_NAMES:
                value = stored[f"{au}_activation_value"]
                assert clip["activations"][au] == (None if value is None else pytest.approx(value))
                if value is not None:
                    assert value == pytest.approx(recomputed[f"{au}_activation_value"])
            assert clip["clip_valid"] == rows[(image, kind)].clip_valid
            assert clip["valid_frame_share"] == pytest.approx(frame_validity(table).mean())
            assert clip["expected_frames"] == FPS
    # Baselines end at the onset; reactions start there.
    assert body["images"][0]["clips"]["baseline"]["curves"]["t"][0] == pytest.approx(-1.0)
    assert body["images"][0]["clips"]["reaction"]["curves"]["t"][0] == pytest.approx(0.0)
    # The smile starts with image 2: its reaction has the largest AU12 activation.
    au12 = {img["index"]: img["clips"]["reaction"]["activations"]["AU12"] for img in body["images"]}
    assert au12[2] > au12[1]
    # Image 3's reaction runs past the end of the recording: short, and said so.
    short = body["images"][2]["clips"]["reaction"]
    assert short["n_frames"] < FPS
    assert any(f"{short['n_frames']} of {FPS}" in r for r in short["reasons"]) or short["invalid_reason"]


@pytest.mark.slow
def test_any_au_can_be_asked_for_and_wrong_ones_are_refused(processed):
    client, app, p = processed
    body = client.get(f"/api/admin/sessions/{p.id}/science?aus=AU1,au25", headers=ADMIN).json()
    assert body["aus"] == ["AU1", "AU25"]
    table = _csv(app, p.id, "reaction", 2)
    assert body["images"][1]["clips"]["reaction"]["curves"]["values"]["AU25"] == pytest.approx(table["AU25"].tolist())
    every = client.get(f"/api/admin/sessions/{p.id}/science?aus=all", headers=ADMIN).json()
    assert set(every["images"][0]["clips"]["baseline"]["curves"]["values"]) == set(AU_NAMES)
    bad = client.get(f"/api/admin/sessions/{p.id}/science?aus=AU4,AU99", headers=ADMIN)
    assert bad.status_code == 422 and "AU99" in bad.json()["detail"]
    assert client.get(f"/api/admin/sessions/{p.id}/science").status_code == 401
    assert client.get("/api/admin/sessions/999/science", headers=ADMIN).status_code == 404


@pytest.mark.slow
def test_processed_pairs_are_judged_against_the_ranking(processed):
    client, app, p = processed
    body = client.get(f"/api/admin/sessions/{p.id}/science", headers=ADMIN).json()
    with app.state.sessionmaker() as db:
        labels = {(lab.image_a, lab.image_b): lab for lab in db.get(StudySession, p.id).labels}
    assert {(q["image_a"], q["image_b"]) for q in body["pairs"]} == set(labels)
    position = {2: 1, 1: 2, 3: 3}
    for pair in body["pairs"]:
        lab = labels[(pair["image_a"], pair["image_b"])]
        assert pair["score_difference"] == pytest.approx(lab.score_difference)
        assert pair["confident"] == lab.confident and pair["preferred"] == lab.preferred
        better = min((pair["image_a"], pair["image_b"]), key=position.get)
        assert pair["ranking_prefers"] == better
        assert pair["agrees"] == (None if lab.preferred is None else lab.preferred == better)


def _add_clips(app, session_id: int, validity: dict[tuple[int, str], bool]) -> None:
    store = app.state.store
    with app.state.sessionmaker() as db:
        for (image, clip), ok in validity.items():
            path = store.features_dir(session_id) / f"{clip}_clip_{image}_features.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            fake_features(30, image).to_csv(path, index=False)
            db.add(Clip(session_id=session_id, image_index=image, clip=clip, n_frames=30, clip_valid=ok,
                        valid_frame_share=1.0 if ok else 0.5, features_file=store.relative(path)))
        db.commit()


def _add_labels(app, session_id: int, labels) -> None:
    with app.state.sessionmaker() as db:
        for a, b, preferred, confident in labels:
            diff = 0.0 if preferred is None else (0.4 if preferred == a else -0.4)
            db.add(Label(session_id=session_id, image_a=a, image_b=b, preferred=preferred,
                         score_difference=diff, confident=confident))
        db.commit()


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_overview_agreement_matches_a_hand_count(client, app):
    _check_hand_count(client, app)


def test_overview_on_postgresql(postgres_url, tmp_path, monkeypatch):
    # The aggregate queries (latest activity per session) and the rest, on PostgreSQL.
    monkeypatch.setenv("FERGI_TEST_DB_URL", postgres_url)
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        _check_hand_count(client, app)
    app.state.engine.dispose()


def _check_hand_count(client, app):
    # Session A ranks 2 > 3 > 1, session B 1 > 2 > 3.
    a = finished_session(client, app, "001", order=(2, 3, 1))
    b = finished_session(client, app, "002", order=(1, 2, 3))
    _add_labels(app, a.id, [
        (1, 2, 2, True),    # agrees
        (1, 3, 1, True),    # disagrees: 3 is ranked above 1
        (2, 3, 2, False),   # agrees, not confident
    ])
    _add_labels(app, b.id, [
        (1, 2, 1, True),    # agrees
        (1, 3, None, False),  # undecided
        (2, 3, 2, True),    # agrees
    ])
    _add_clips(app, a.id, {(1, "reaction"): True, (2, "reaction"): True, (3, "reaction"): False,
                           (1, "baseline"): True})
    _add_clips(app, b.id, {(1, "reaction"): True})
    body = client.get("/api/admin/overview", headers=ADMIN).json()
    # Confident and judged: 3 of 4 agree; all decided pairs: 4 of 5.
    agree = body["agreement"]
    assert (agree["agree"], agree["n"]) == (3, 4) and agree["share"] == 0.75
    assert (agree["ci_low"], agree["ci_high"]) == pytest.approx(_wilson(3, 4))
    assert agree["method"] == "wilson" and agree["level"] == 0.95
    decided = body["agreement_all_decided"]
    assert (decided["agree"], decided["n"]) == (4, 5)
    assert (decided["ci_low"], decided["ci_high"]) == pytest.approx(_wilson(4, 5))
    assert body["pairs"] == {"n": 6, "n_confident": 4}
    # Running, in the order the sessions were finished: A alone (1 of 2), then both.
    running = body["running_agreement"]
    assert [r["session_id"] for r in running] == [a.id, b.id]
    assert [(r["agree"], r["n"]) for r in running] == [(1, 2), (3, 4)]
    assert (running[0]["ci_low"], running[0]["ci_high"]) == pytest.approx(_wilson(1, 2))
    # Valid reaction clips: 3 of 4.
    assert body["clips"]["reaction"] == {"n": 4, "valid": 3, "share": 0.75}
    assert body["clips"]["baseline"] == {"n": 1, "valid": 1, "share": 1.0}
    rows = {r["id"]: r for r in body["session_rows"]}
    assert (rows[a.id]["agree"], rows[a.id]["n_judged"], rows[a.id]["n_pairs"]) == (1, 2, 3)
    assert (rows[b.id]["n_reaction_clips"], rows[b.id]["n_reaction_valid"]) == (1, 1)
    # The session page's pairs say the same, pair by pair.
    pairs = client.get(f"/api/admin/sessions/{a.id}/science", headers=ADMIN).json()["pairs"]
    assert [(q["image_a"], q["image_b"], q["agrees"], q["rank_a"], q["rank_b"]) for q in pairs] == [
        (1, 2, True, 3, 1), (1, 3, False, 3, 2), (2, 3, True, 1, 2),
    ]


def test_sessions_are_finished_abandoned_or_in_progress(client, app):
    done = finished_session(client, app, "001")
    stale = Participant(client, "002")
    stale.consent()
    fresh = Participant(client, "003")
    two_hours_ago = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=2)
    with app.state.sessionmaker() as db:
        sess = db.get(StudySession, stale.id)
        sess.created_at = sess.consent_at = two_hours_ago
        db.commit()
    body = client.get("/api/admin/overview", headers=ADMIN).json()
    rows = {r["id"]: r for r in body["session_rows"]}
    assert (rows[done.id]["status"], rows[stale.id]["status"], rows[fresh.id]["status"]) == (
        "finished", "abandoned", "in progress",
    )
    counts = {k: body["sessions"][k] for k in ("n_started", "n_finished", "n_abandoned", "n_in_progress")}
    assert counts == {"n_started": 3, "n_finished": 1, "n_abandoned": 1, "n_in_progress": 1}
    assert body["participants"] == {"n": 3, "n_with_sessions": 3, "n_with_finished": 1}
    assert rows[done.id]["finished_at"].endswith("Z") and rows[stale.id]["finished_at"] is None
    assert rows[stale.id]["last_activity_at"] == two_hours_ago.isoformat() + "Z"
    # The time is configurable: after 3 h, a 2 h pause is still in progress.
    later = client.get("/api/admin/overview?abandoned_after_min=180", headers=ADMIN).json()
    assert {r["id"]: r["status"] for r in later["session_rows"]}[stale.id] == "in progress"
    # The sessions list's light endpoint says the same.
    light = client.get("/api/admin/activity", headers=ADMIN).json()["sessions"]
    assert {int(k): v["status"] for k, v in light.items()} == {r["id"]: r["status"] for r in body["session_rows"]}
    assert light[str(stale.id)]["last_activity_at"] == rows[stale.id]["last_activity_at"]
    assert light[str(done.id)]["last_activity_at"] == rows[done.id]["last_activity_at"]
    later = client.get("/api/admin/activity?abandoned_after_min=180", headers=ADMIN).json()["sessions"]
    assert later[str(stale.id)]["status"] == "in progress"
    # Timestamps of the answers and the ranking, on the session's detail.
    detail = client.get(f"/api/admin/sessions/{done.id}", headers=ADMIN).json()
    assert all(dt.datetime.fromisoformat(a["answered_at"][:-1]) >= two_hours_ago for a in detail["answers"])
    science = client.get(f"/api/admin/sessions/{done.id}/science", headers=ADMIN).json()
    last = rows[done.id]["last_activity_at"]
    assert science["ranked_at"] <= last and detail["finished_at"] <= last
    assert client.get("/api/admin/overview?abandoned_after_min=0", headers=ADMIN).status_code == 422
    assert client.get("/api/admin/overview").status_code == 401
    # The last chunk counts as activity: a session begun 2 h ago, recording until 10 min ago.
    recording = ready_participant(client, app, "004")
    seg = recording.start_segment()
    assert recording.chunk(seg, 0, WEBM_HEAD + b"a" * 10).status_code == 200
    ten_min_ago = two_hours_ago + dt.timedelta(minutes=110)
    with app.state.sessionmaker() as db:
        sess = db.get(StudySession, recording.id)
        sess.created_at = sess.consent_at = sess.prompt_at = sess.webcam_ok_at = two_hours_ago
        for segment in sess.segments:
            segment.started_at = two_hours_ago
            for chunk in segment.chunks:
                chunk.received_at = ten_min_ago
        db.commit()
    row = {r["id"]: r for r in client.get("/api/admin/overview", headers=ADMIN).json()["session_rows"]}[recording.id]
    assert row["status"] == "in progress" and row["last_activity_at"] == ten_min_ago.isoformat() + "Z"
    # ... and so does an answer: image 1 answered 5 min ago.
    recording.present(seg, 1, 0.0)
    assert recording.call("PUT", "/images/1/answer", json=ANSWER).status_code == 200
    five_min_ago = ten_min_ago + dt.timedelta(minutes=5)
    with app.state.sessionmaker() as db:
        sess = db.get(StudySession, recording.id)
        for event in sess.events:
            event.received_at = two_hours_ago
        sess.answers[0].answered_at = five_min_ago
        db.commit()
    row = {r["id"]: r for r in client.get("/api/admin/overview", headers=ADMIN).json()["session_rows"]}[recording.id]
    assert row["last_activity_at"] == five_min_ago.isoformat() + "Z"
    light = client.get("/api/admin/activity?abandoned_after_min=3", headers=ADMIN).json()["sessions"]
    assert light[str(recording.id)] == {"status": "abandoned", "last_activity_at": five_min_ago.isoformat() + "Z"}


def test_binomial_interval_wilson_and_exact():
    from scipy.stats import beta, binomtest

    assert binomial_ci(0, 0) is None
    assert binomial_ci(7, 10) == pytest.approx(_wilson(7, 10))
    # The same as scipy's, for every k of a few n.
    for n in (1, 2, 9, 40):
        for k in range(n + 1):
            for method in ("wilson", "exact"):
                ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method=method)
                assert binomial_ci(k, n, method=method) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert binomial_ci(3, 4, level=0.99)[0] < binomial_ci(3, 4)[0]
    with pytest.raises(ValueError):
        binomial_ci(5, 4)
    # Clopper-Pearson from the beta quantiles.
    low, high = binomial_ci(7, 10, method="exact")
    assert low == pytest.approx(beta.ppf(0.025, 7, 4)) and high == pytest.approx(beta.ppf(0.975, 8, 3))
    assert binomial_ci(10, 10)[1] == pytest.approx(1.0)


def test_clip_validity_prefers_the_stored_reason():
    rules = validity_rules()
    short = SimpleNamespace(invalid_reason="9 of 150 frames", clip_valid=True, valid_frame_share=1.0,
                            n_frames=9, features_file="f.csv")
    assert clip_valid(short) is False
    assert clip_reasons(short, rules, 150) == ["9 of 150 frames"]
    # Without the column: the frame share decides, and a short clip is pointed out.
    old = SimpleNamespace(clip_valid=False, valid_frame_share=0.5, n_frames=120, features_file="f.csv")
    assert clip_valid(old) is False
    assert clip_reasons(old, rules, 150) == ["50 % of frames valid (at least 80 % needed)", "120 of 150 expected frames"]
    fine = SimpleNamespace(clip_valid=True, valid_frame_share=0.95, n_frames=150, features_file="f.csv")
    assert clip_valid(fine) is True and clip_reasons(fine, rules, 150) == []
