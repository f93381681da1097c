"""Every benchmark's --quick mode runs and prints sane figures (never a timed assertion).

Each benchmark under ``benchmarks/`` exposes ``main(argv)`` returning its figures; these
tests run it with ``--quick`` (the same code paths on the smallest input that exercises
them) so none rots unnoticed. Only that the figures exist, are finite and positive and
count the right things is checked: how fast they are is for a person to read.
"""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.helpers.paths import BENCHMARKS

# Benchmarks whose --quick mode is tested elsewhere.
TESTED_ELSEWHERE = {
    "bench_geometry_crosstalk",  # tests/au/test_geometry_reference.py
    "bench_train_au",  # tests/au/train/test_train.py
    "bench_export",  # tests/preference/test_export_labels.py
}


def load(name: str):
    """Import ``benchmarks/<name>.py`` by path (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_every_benchmark_has_a_quick_mode_test():
    tested = {name[len("test_"):-len("_quick")] for name in globals() if name.endswith("_quick")}
    found = {path.stem for path in BENCHMARKS.glob("bench_*.py")}
    assert found - TESTED_ELSEWHERE == {f"bench_{name}" for name in tested}
    for path in BENCHMARKS.glob("bench_*.py"):
        text = path.read_text()
        assert '"--quick"' in text and "def main(argv" in text, path.name


@pytest.mark.slow
def test_extract_quick(capsys):
    figures = load("bench_extract").main(["--quick"])
    printed = capsys.readouterr().out
    assert "2 clips per run" in printed and "fps/worker" in printed
    assert positive(figures["detect_ms"])
    assert [run["workers"] for run in figures["runs"]] == [1, 2]
    for run in figures["runs"]:
        # Two 2 s clips at 30 fps, every frame read, by one worker and by two.
        assert run["frames"] == 2 * 2 * 30
        for key in ("wall_s", "fps", "fps_per_worker", "fps_per_cpu_s"):
            assert positive(run[key]), (key, run)
        assert set(run["ms_per_frame"]) == {"decode", "face", "au", "other"}
        for stage in ("decode", "face", "au"):
            assert positive(run["ms_per_frame"][stage]), (stage, run)
        assert math.isfinite(run["ms_per_frame"]["other"])


def test_foundation_quick(fergi_public, capsys):
    figures = load("bench_foundation").main(["--quick", "--data", str(fergi_public)])
    printed = capsys.readouterr().out
    assert "quick: participants 001, 002, 005" in printed and "peak RSS" in printed
    for key in ("load_frames_cold_s", "load_frames_warm_s", "load_images_s",
                "compute_activation_values_s", "screen_participants_s", "image_table_s",
                "reaction_statistics_s", "peak_rss_mib"):
        assert positive(figures[key]), key
    # Only the three participants' files are read, and their clips only.
    assert figures["files_evicted"] > 0
    files = [f for p in ("001", "002", "005")
             for f in (fergi_public / "data" / p).glob("session_*/*_clip_*_features.csv")]
    assert figures["clips"] == len(files)
    assert figures["excluded"] == ["002"]  # AU4 at rest, as in the full release
    assert 0 < figures["valid_reaction_clips"] <= figures["images"] < figures["clips"]
    assert figures["tests"] > 0 and 0 <= figures["significant"] <= figures["tests"]


@pytest.mark.slow
def test_preference_quick(fergi_public, monkeypatch, capsys):
    monkeypatch.setenv("FERGI_DATA", str(fergi_public))
    figures = load("bench_preference").main(["--quick"])
    printed = capsys.readouterr().out
    for line in ("Tables 1 and 2", "FAU-Net LOPO ( 3 folds", "annotate_pairs (raw AUcomb",
                 "annotate_reactions (default scale-free model)", "whole reproduce"):
        assert line in printed, line
    for key in ("load_s", "tables_s", "faunet_s", "reproduce_paper_tables_s", "fit_s", "lopo_s",
                "annotate_pairs_s", "load_reaction_data_s", "annotate_reactions_s", "reproduce_s"):
        assert positive(figures[key]), key
    assert figures["excluded"] == ["002"] and figures["lopo_folds"] == 2
    for key in ("aucomb_accuracy", "faunet_accuracy", "ensemble_with_faunet_accuracy",
                "lopo_accuracy"):
        assert 0 <= figures[key] <= 100, key
    assert 0 < figures["aucomb_n_selected"]
    # Both annotators label every within-session pair of the three participants' images.
    assert figures["annotate_pairs_pairs"] > 0
    assert figures["annotate_reactions_pairs"] >= figures["annotate_pairs_pairs"]
    assert 0 <= figures["annotate_reactions_confident"] <= figures["annotate_reactions_pairs"]
    assert {"load", "features", "statistics", "preference tables"} <= set(figures["reproduce_steps"])


@pytest.mark.slow
def test_study_quick(capsys):
    figures = load("bench_study").main(["--quick"])
    printed = capsys.readouterr().out
    assert "3 chunks of 80 kB per participant" in printed and "N=   3" in printed
    (run,) = figures["runs"]
    assert run["participants"] == 3 and run["errors"] == 0, run["first_errors"]
    # Every acknowledged chunk is stored: a database row and a file with its hash.
    assert run["held"] == 3 and run["acknowledged"] == run["chunks"] == 3 * 3
    assert run["chunks_verified"] == run["acknowledged"]
    for key in ("p50_ms", "p95_ms", "p99_ms", "healthz_p99_ms"):
        assert positive(run[key]), key
    assert run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]


@pytest.mark.slow
def test_studylib_quick(capsys):
    figures = load("bench_studylib").main(["--quick"])
    printed = capsys.readouterr().out
    assert "recording:" in printed and "total" in printed
    assert set(figures["stages_s"]) == {"standardize", "clips", "features", "activations", "labels"}
    assert all(math.isfinite(s) and s >= 0 for s in figures["stages_s"].values())
    for key in ("recording_s", "frames", "megabytes", "total_s"):
        assert positive(figures[key]), key
    # Two images, a smile then a frown: one pair, the smile preferred.
    labels = figures["labels"]
    assert len(labels) == 1 and int(labels["preferred"].iloc[0]) == 1
    # Before and after real-time processing, through the study's HTTP API.
    assert "ranking to stored labels" in printed and "sessions per hour, one worker" in printed
    for part in ("before", "after"):
        for key in ("ranking_to_labels_s", "cpu_s", "sessions_per_hour"):
            assert positive(figures[part][key]), (part, key)
    after = figures["after"]
    assert positive(after["worker_s"]) and after["labels"] == 1
    # each image was analysed from the chunks uploaded so far, image 1 before the end
    assert sorted(after["analysed_after_chunk"]) == [1, 2]
    assert after["analysed_after_chunk"][1] < after["chunks"]


@pytest.mark.slow
def test_labels_quick(fergi_public, capsys):
    figures = load("bench_labels").main([str(fergi_public), "--quick"])
    assert "strict leave-one-participant-out" in capsys.readouterr().out
    assert set(figures["variants"]) == {"aucomb/none", "aucomb/baseline_median"}
    for entry in figures["variants"].values():
        assert positive(entry["seconds"])
        for key in ("selective", "independent", "integrated"):
            low, high = entry[key]["ci"]
            assert 0 <= low <= entry[key]["accuracy"] <= high <= 100
    invariance = figures["invariance"]
    # Scale-free models give identical labels under distorted AUs; the raw one does not.
    assert invariance["baseline_median, x factor"]["agreement"] == 100.0
    assert invariance["quantile, power transform"]["agreement"] == 100.0
    assert invariance["raw (paper), x factor"]["agreement"] < 100.0


@pytest.mark.slow
def test_scorers_quick(capsys):
    figures = load("bench_scorers").main(["--quick", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "img/s" in printed and "cache: first run scored" in printed
    assert [run["scorer"] for run in figures["runs"]] == [
        "clip", "aesthetic", "blip", "imagereward", "pickscore", "hpsv2"]
    for run in figures["runs"]:
        assert run["images"] == 6
        for key in ("build_s", "images_per_s", "preprocess_images_per_s"):
            assert positive(run[key]), (key, run)
    # Two scorers x 6 images scored once, then all reused from the cache.
    assert figures["cache"]["first_scored"] == 12
    assert figures["cache"]["second_scored"] == 0 and figures["cache"]["second_cached"] == 12


@pytest.mark.slow
def test_scale_quick(capsys):
    pytest.importorskip("ray")
    figures = load("bench_scale").main(["--quick"])
    printed = capsys.readouterr().out
    assert "x local" in printed and "2 clips of 1 s" in printed
    runs = figures["extraction"]["runs"]
    assert [(run["executor"], run["workers"]) for run in runs] == [
        ("local", 1), ("ray", 1), ("ray", 2)]
    for run in runs:
        # Two 1 s clips at 30 fps, every frame read, in each run.
        assert run["frames"] == 2 * 30
        for key in ("wall_s", "fps", "ratio"):
            assert positive(run[key]), (key, run)
        assert run["ratio"] == pytest.approx(run["fps"] / runs[0]["fps"])
    assert runs[0]["ratio"] == 1.0 and all(positive(run["start_s"]) for run in runs[1:])
    if (BENCHMARKS / "_scale_study.py").is_file():
        assert figures["sessions"] is not None
    else:
        assert figures["sessions"] is None and "_scale_study.py is not there" in printed
