"""Issue 18 item 5: the release's Aesthetic_score and BLIP_score are untrained output.

The authors' scores/AestheticScore.py and scores/BLIPScore.py build their networks and never
load the trained weights; these tests check that fergi says so wherever it reports them,
and that no integrated model fergi ships or fits by default uses them.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from fergi.cli import main
from fergi.datasets import UNTRAINED_IN_RELEASE, check_score_columns, load_images


def test_release_aesthetic_and_blip_are_flagged_with_the_evidence(fergi_public):
    report = check_score_columns(load_images(fergi_public))
    flagged = sorted(c for c, e in report.items() if e["untrained_in_release"])
    assert flagged == ["Aesthetic_score", "BLIP_score"]
    aesthetic, blip = report["Aesthetic_score"], report["BLIP_score"]
    # Off the trained scale: the LAION head gives about 4-7, a trained BLIP head > 0.
    assert aesthetic["mean"] == pytest.approx(0.027, abs=5e-4) and aesthetic["sd"] == pytest.approx(0.006, abs=5e-4)
    assert abs(blip["mean"]) < 0.005 and aesthetic["n"] == blip["n"] == 2827
    assert "AestheticScore.py" in aesthetic["reason"] and "never loads" in aesthetic["reason"]
    assert "BLIPScore.py" in blip["reason"] and "load_checkpoint" in blip["reason"]
    # They track neither the ratings nor any trained score; the trained scores do.
    for column in flagged:
        assert set(report[column]["spearman"]) == {"overall_rating", "CLIP_score", "ImageReward_score",
                                                   "PickScore", "HPS_V2_score"}
        assert max(abs(v) for v in report[column]["spearman"].values()) < 0.05
    for column in ("ImageReward_score", "PickScore", "HPS_V2_score"):
        assert not report[column]["untrained_in_release"] and report[column]["reason"] is None
        assert report[column]["spearman"]["overall_rating"] > 0.15


def test_trained_scales_are_not_flagged_and_missing_columns_are_reported_empty():
    rng = np.random.default_rng(0)
    images = pd.DataFrame({"overall_rating": rng.integers(1, 8, 40),
                           "Aesthetic_score": rng.normal(5.6, 0.5, 40),  # LAION head's scale
                           "BLIP_score": rng.normal(0.42, 0.05, 40)})   # a trained ITC head's
    report = check_score_columns(images)
    assert not any(e["untrained_in_release"] for e in report.values())
    assert report["PickScore"]["n"] == 0 and report["PickScore"]["mean"] is None
    # The same columns on the release's scale are flagged.
    images["Aesthetic_score"] = rng.normal(0.027, 0.006, 40)
    images["BLIP_score"] = rng.normal(0.0, 0.05, 40)
    report = check_score_columns(images)
    assert report["Aesthetic_score"]["untrained_in_release"] and report["BLIP_score"]["untrained_in_release"]


def test_reproduce_marks_them_in_results_json_and_prints_why(fergi_public, tmp_path, capsys):
    assert main(["reproduce", "--data", str(fergi_public), "--out", str(tmp_path),
                 "--no-preference", "--no-figures"]) == 0
    text = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    columns = results["score_columns"]
    assert {c: e["untrained_in_release"] for c, e in columns.items()} == {
        "CLIP_score": False, "Aesthetic_score": True, "BLIP_score": True,
        "ImageReward_score": False, "PickScore": False, "HPS_V2_score": False}
    assert columns["Aesthetic_score"]["reason"] == UNTRAINED_IN_RELEASE["Aesthetic_score"]
    assert "Untrained score columns: Aesthetic_score and BLIP_score" in text
    assert "Aesthetic_score: mean 0.027" in text and "why: the authors' scores/BLIPScore.py" in text


def test_paper_tables_mark_their_rows_as_chance(fergi_public, paper_tables):
    from fergi.preference import format_paper_tables

    # A copy: the session's tables are shared.
    results = {**paper_tables, "score_columns": check_score_columns(load_images(fergi_public))}
    lines = format_paper_tables(results).splitlines()
    marked = [line.split()[0] for line in lines if "[untrained in release: chance]" in line]
    assert marked == ["Aesthetic", "BLIP", "Aesthetic", "BLIP"]  # Table 1, then Table 2
    assert any(line.split()[:3] == ["Aesthetic", "Score", "51.39"] for line in lines)


def test_integrated_models_never_use_them(caplog, monkeypatch):
    from fergi.preference import (
        DEFAULT_MODEL,
        ENSEMBLE_COLUMNS,
        RAW_MODEL,
        EnsembleScore,
        default_model_path,
    )

    assert not set(ENSEMBLE_COLUMNS) & set(UNTRAINED_IN_RELEASE)
    for name in (DEFAULT_MODEL, RAW_MODEL):
        doc = json.loads(default_model_path(name).read_text())
        assert doc["model"]["integration"]["columns"] == list(ENSEMBLE_COLUMNS)
    # Asked to, a fit on the release's untrained values says what it is fitting.
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"participant": "001", "session": 1, "image": np.arange(1, 6),
                          "rank_score": [5, 4, 3, 2, 1], "Aesthetic_score": rng.normal(0.027, 0.006, 5),
                          "PickScore": rng.normal(20.7, 1.2, 5)})
    monkeypatch.setattr("fergi.preference._ensemble._warned", set())  # said once per process
    with caplog.at_level(logging.WARNING, logger="fergi.preference._ensemble"):
        EnsembleScore(columns=("Aesthetic_score", "PickScore"), weight_grid=[(0.5, 0.5)]).fit(table)
    assert "Aesthetic_score: these values are untrained output" in caplog.text
    assert "PickScore" not in caplog.text
