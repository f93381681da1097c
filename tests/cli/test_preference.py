"""``fergi fit`` and ``fergi annotate`` on small copies of the public release."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from fergi.cli import main
from fergi.preference import load_model

PARTICIPANTS = ("001", "005", "006", "007")


def make_release(src, dst, participants=PARTICIPANTS, *, rankings=True):
    """A release-layout folder with a few participants (feature files linked, not copied)."""
    (dst / "data").mkdir(parents=True)
    prep = dst / "preparation"
    (prep / "preprocessed_image_data").mkdir(parents=True)
    for p in participants:
        (dst / "data" / p).symlink_to(src / "data" / p, target_is_directory=True)
        images = pd.read_csv(src / "preparation" / "preprocessed_image_data" / f"{p}.csv", dtype=str)
        if not rankings:
            images["rank_score"] = ""
        images.to_csv(prep / "preprocessed_image_data" / f"{p}.csv", index=False)
    for name in ("valid_sessions.json", "invalid_images.json"):
        full = json.loads((src / "preparation" / name).read_text())
        (prep / name).write_text(json.dumps({p: full[p] for p in participants if p in full}))
    return dst


def test_fit_prints_lopo_accuracy_and_writes_model(fergi_public, tmp_path, capsys):
    data = make_release(fergi_public, tmp_path / "rel")
    out = tmp_path / "aucomb.json"
    assert main(["fit", "--data", str(data), "--model", "aucomb", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Strict leave-one-participant-out: 4 participants" in text
    assert "selective (own thresholds)" in text and "independent (all pairs)" in text
    assert "integrated with the ensemble" in text
    model = json.loads(out.read_text())
    assert model["kind"] == "AnnotationModel"
    assert model["model"]["normalization"]["method"] == "baseline_median"
    assert model["model"]["features"]["estimator"] == "ir50-fergi"
    lopo = model["metadata"]["strict_lopo"]
    assert lopo["n_pairs"] > 0
    low, high = lopo["independent"]["ci"]
    assert low <= lopo["independent"]["accuracy"] <= high


def test_annotate_without_rankings_equals_with_rankings(fergi_public, tmp_path, capsys):
    ranked = make_release(fergi_public, tmp_path / "ranked")
    unranked = make_release(fergi_public, tmp_path / "unranked", rankings=False)
    assert main(["annotate", "--data", str(ranked), "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main(["annotate", "--data", str(unranked), "--out", str(tmp_path / "b.jsonl")]) == 0
    a = (tmp_path / "a.jsonl").read_text()
    assert a == (tmp_path / "b.jsonl").read_text()
    rows = [json.loads(line) for line in a.splitlines()]
    threshold = load_model().valence_.threshold_
    assert {r["participant"] for r in rows} == set(PARTICIPANTS)
    assert any(r["above_threshold"] for r in rows) and not all(r["above_threshold"] for r in rows)
    for r in rows:
        assert r["preferred"] == (r["image_a"] if r["score_difference"] > 0 else r["image_b"])
        assert r["above_threshold"] == (abs(r["score_difference"]) >= threshold)
        assert r["label_source"] == "reactions" and r["normalization"] == "baseline_median"
    # Fitting needs the rankings that annotation does not.
    assert main(["fit", "--data", str(unranked), "--out", str(tmp_path / "m.json")]) == 2
    assert "no rankings" in capsys.readouterr().err


def test_annotate_with_fitted_faunet(fergi_public, tmp_path):
    data = make_release(fergi_public, tmp_path / "rel", participants=("001", "005"))
    model_dir = tmp_path / "faunet"
    assert main(["fit", "--data", str(data), "--model", "faunet", "--out", str(model_dir), "--no-lopo"]) == 0
    assert main(["annotate", "--data", str(data), "--model", str(model_dir),
                 "--out", str(tmp_path / "l.jsonl"), "--confident-only"]) == 0
    assert len((tmp_path / "l.jsonl").read_text().splitlines()) > 0


def test_annotate_errors_are_one_line(fergi_public, tmp_path, capsys):
    data = make_release(fergi_public, tmp_path / "rel", participants=("001", "005"))
    wrong = tmp_path / "results.json"
    wrong.write_text(json.dumps({"table1": {}}))
    assert main(["annotate", "--data", str(data), "--model", str(wrong), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "results.json: not a fergi preference model file" in err
    assert len(err.strip().splitlines()) == 1
    # A participant with a single reaction clip cannot form a pair.
    lonely = tmp_path / "lonely"
    make_release(fergi_public, lonely, participants=("001",))
    src = fergi_public / "data" / "005"
    session = sorted(p.name for p in src.iterdir())[0]
    target = lonely / "data" / "005" / session
    target.mkdir(parents=True)
    shutil.copy(src / session / "reaction_clip_1_features.csv", target)
    sessions = json.loads((lonely / "preparation" / "valid_sessions.json").read_text())
    sessions["005"] = [int(session.split("_")[1])]
    (lonely / "preparation" / "valid_sessions.json").write_text(json.dumps(sessions))
    shutil.rmtree(lonely / "preparation" / "preprocessed_image_data")
    code = main(["annotate", "--data", str(lonely), "--out", str(tmp_path / "y.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "005" in err and "only one valid image" in err and "--skip-single" in err
    assert not (tmp_path / "y.jsonl").exists()
    # On request the others are labelled all the same.
    assert main(["annotate", "--data", str(lonely), "--out", str(tmp_path / "y.jsonl"), "--skip-single"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "y.jsonl").read_text().splitlines()]
    assert lines and {line["participant"] for line in lines} == {"001"}


def test_write_errors_are_one_line(fergi_public, tmp_path, capsys):
    data = make_release(fergi_public, tmp_path / "rel", participants=("001", "005"))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["annotate", "--data", str(data), "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not list(tmp_path.glob(".labels-*"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["fit", "--data", str(data), "--out", str(blocker), "--no-lopo"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(["annotate", "--data", str(data), "--out", str(blocker / "labels.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot write" in err and len(err.strip().splitlines()) == 1


def test_annotate_labels_reaction_clips_without_a_survey_row(fergi_public, tmp_path):
    data = make_release(fergi_public, tmp_path / "rel", participants=("001", "005"))
    full = tmp_path / "full.jsonl"
    assert main(["annotate", "--data", str(data), "--out", str(full)]) == 0
    survey = data / "preparation" / "preprocessed_image_data" / "001.csv"
    lines = survey.read_text().splitlines()
    survey.write_text("\n".join([lines[0], *lines[6:]]) + "\n")
    partial = tmp_path / "partial.jsonl"
    assert main(["annotate", "--data", str(data), "--out", str(partial)]) == 0
    assert partial.read_text() == full.read_text()


def test_help_mentions_the_activation_scale(capsys):
    with pytest.raises(SystemExit):
        main(["annotate", "--help"])
    text = capsys.readouterr().out
    assert "scale-free" in text and "features_meta.json" in text and "--integrate" in text
