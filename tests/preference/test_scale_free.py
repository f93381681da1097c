"""Issue 8: labels that mean the same from any AU estimator, on the public release.

Scale-free normalisations (baseline median, quantile mapping), strict LOPO with
participant-bootstrap intervals, linear12, and provenance checks of features and models.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fergi import FergiError
from fergi.cli import main
from fergi.datasets import (
    AU_NAMES,
    FeatureProvenance,
    feature_provenance,
    load_images,
    load_invalid_images,
    write_features_meta,
)
from fergi.preference import (
    RAW_MODEL,
    AnnotationModel,
    AUcombValence,
    Linear12Valence,
    annotate_reactions,
    check_compatibility,
    default_model_path,
    default_valence,
    evaluate_lopo,
    load_model,
    reaction_data_from_frames,
    save_model,
)
from fergi.preference._bootstrap import bootstrap_ratio, bootstrap_selective
from fergi.preference._linear import fit_pairwise_logistic

EXCLUDED = ("002", "004", "039")
RELEASE_SCALE = FeatureProvenance("ir50-fergi")


@pytest.fixture(scope="module")
def release_data(fergi_public, release_frames):
    return reaction_data_from_frames(
        release_frames, load_images(fergi_public), invalid=load_invalid_images(fergi_public),
        provenance=feature_provenance(fergi_public), source="release",
    )


@pytest.fixture(scope="module")
def screened(release_data):
    return release_data.subset([p for p in release_data.participants if p not in EXCLUDED])


def _same_labels(a: pd.DataFrame, b: pd.DataFrame) -> None:
    keys = ["participant", "session", "image_a", "image_b"]
    a, b = a.sort_values(keys, ignore_index=True), b.sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(a[keys], b[keys])
    assert a["preferred"].astype("Int64").equals(b["preferred"].astype("Int64"))
    assert (a["confident"].to_numpy() == b["confident"].to_numpy()).all()
    assert np.allclose(a["score_difference"], b["score_difference"], rtol=1e-9, atol=1e-12)


def test_release_is_recognised_and_a_rescaled_copy_is_not(fergi_public, tmp_path):
    assert feature_provenance(fergi_public).estimator == "ir50-fergi"
    copy = tmp_path / "rescaled" / "data" / "001" / "session_1"
    copy.mkdir(parents=True)
    for src in sorted((fergi_public / "data" / "001" / "session_1").glob("*.csv")):
        frames = pd.read_csv(src)
        frames[list(AU_NAMES)] = frames[list(AU_NAMES)].where(frames[list(AU_NAMES)] < 0,
                                                              frames[list(AU_NAMES)] * 0.4)
        frames.to_csv(copy / src.name, index=False)
    assert feature_provenance(tmp_path / "rescaled").estimator == "unknown"


@pytest.mark.slow
def test_baseline_median_model_keeps_table1_accuracy(screened):
    paper = evaluate_lopo(AnnotationModel(default_valence("aucomb", "none"), "none"), screened, n_boot=200)
    scale_free = evaluate_lopo(AnnotationModel(), screened, n_boot=200)
    # The raw model under strict LOPO is Table 1 exactly; strict integration is 68.08 %.
    assert paper["selective"]["accuracy"] == 72.70 and paper["selective"]["n"] == 685
    assert paper["integrated"]["accuracy"] == 68.08
    sel = scale_free["selective"]
    assert abs(sel["accuracy"] - 72.70) <= 1.0
    assert abs(sel["coverage"] - paper["selective"]["coverage"]) <= 3.0
    low, high = sel["ci"]
    assert low < sel["accuracy"] < high and high - low < 15
    assert scale_free["integrated"]["accuracy"] > scale_free["independent"]["accuracy"] + 5
    for kind in ("au", "integrated"):
        assert set(scale_free["at_coverage"][kind]) == {"10", "19.4", "30"}


@pytest.mark.slow
def test_baseline_median_labels_ignore_per_participant_rescaling(release_data, capsys):
    model = load_model()  # the shipped scale-free model
    raw = load_model(default_model_path(RAW_MODEL))
    # One random factor per participant, every AU value of theirs multiplied by it.
    scaled = release_data.with_transformed_aus(lambda x, rng: x * rng.uniform(0.3, 3.0), seed=1)
    before = annotate_reactions(release_data, model)
    after = annotate_reactions(scaled, model)
    _same_labels(before, after)

    def coverage(labels):
        return labels.groupby("participant")["confident"].mean() * 100

    raw_before = coverage(annotate_reactions(release_data, raw))
    raw_after = coverage(annotate_reactions(scaled, raw))
    change = (raw_after - raw_before).abs()
    with capsys.disabled():
        print(f"\nper-participant coverage change under random factors in [0.3, 3]: "
              f"baseline-median 0 (labels identical); raw mean {change.mean():.1f} points, "
              f"max {change.max():.1f} (pooled {raw_before.mean():.1f}% -> {raw_after.mean():.1f}%)")
    assert change.mean() > 5


@pytest.mark.slow
def test_quantile_labels_ignore_increasing_transforms(release_data):
    model = load_model().fallback_  # the shipped quantile-mapped model
    assert model.normalization == "quantile"

    def power(x, rng):
        # Strictly increasing on the values' domain (-1 marks frames without a face); a
        # different scale and power for every AU of every participant.
        scale = rng.uniform(0.3, 3.0, size=x.shape[1])
        exponent = rng.uniform(0.5, 2.0, size=x.shape[1])
        return scale * (x + 2.0) ** exponent

    warped = release_data.with_transformed_aus(power, seed=2)
    before = annotate_reactions(release_data, model)
    after = annotate_reactions(warped, model)
    keys = ["participant", "session", "image_a", "image_b"]
    pd.testing.assert_frame_equal(before.sort_values(keys, ignore_index=True),
                                  after.sort_values(keys, ignore_index=True))


@pytest.mark.slow
def test_lopo_is_strict_held_out_rankings_change_nothing_of_their_own(screened):
    """Every fitted piece of a fold (valence, thresholds, ensemble, z-scores, integration,
    quantile reference) ignores the held-out participant's rankings."""
    subset = screened.subset(screened.participants[:8])
    target = subset.participants[0]
    shuffled = subset.images.copy()
    rows = shuffled["participant"].astype(str) == target
    shuffled.loc[rows, "rank_score"] = shuffled.loc[rows, "rank_score"].sample(
        frac=1.0, random_state=0).to_numpy()
    other = type(subset)(**{**subset.__dict__, "images": shuffled})
    for model in (AnnotationModel(), AnnotationModel(default_valence("aucomb", "quantile"), "quantile"),
                  AnnotationModel(Linear12Valence(c_grid=(0.1, 1.0)))):
        a = evaluate_lopo(model, subset, n_boot=100)["scores"]
        b = evaluate_lopo(model, other, n_boot=100)["scores"]
        mine_a = a[a["participant"] == target][["valence_score", "integrated_score"]].to_numpy()
        mine_b = b[b["participant"] == target][["valence_score", "integrated_score"]].to_numpy()
        assert np.array_equal(mine_a, mine_b)
        # ... while the other folds, which train on the target, may see the change.
        assert not a[a["participant"] != target]["valence_score"].isna().any()


@pytest.mark.slow
def test_linear12_beats_aucomb_on_independent_accuracy(screened):
    from fergi.preference import paired_difference

    aucomb = evaluate_lopo(AnnotationModel(), screened, n_boot=500)
    linear = evaluate_lopo(AnnotationModel(Linear12Valence()), screened, n_boot=500)
    a, b = linear["per_participant"], aucomb["per_participant"]
    gain = paired_difference(a["n_correct_all"], b["n_correct_all"], a["n_pairs"], n_boot=500)
    assert gain["difference"] > 0.5 and gain["ci"][0] > 0


def test_pairwise_logistic_solves_its_optimality_conditions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    sign = np.where(x @ np.array([1.0, -0.5, 0.0, 0.3, 0.0]) + rng.normal(size=400) > 0, 1, -1)
    c = np.array([0.1, 10.0])
    beta = fit_pairwise_logistic(x, sign, c)
    z = x * sign[:, None]
    for b, ci in zip(beta, c, strict=True):
        p = 1 / (1 + np.exp(z @ b))
        grad = -(p @ z) + len(x) / ci * b
        assert np.abs(grad).max() < 1e-6
    # Batched folds equal separate fits on the kept pairs.
    keep = rng.random(400) < 0.7
    batched = fit_pairwise_logistic(x, sign, [1.0], weights=keep[None, :].astype(float))[0]
    alone = fit_pairwise_logistic(x[keep], sign[keep], 1.0)[0]
    assert np.allclose(batched, alone, atol=1e-8)
    assert np.abs(beta[0]).sum() < np.abs(beta[1]).sum()  # stronger penalty, smaller weights


def test_bootstrap_intervals():
    # Every participant at 70 %: no spread whatever the draw.
    assert bootstrap_ratio([7, 14, 21], [10, 20, 30]) == (70.0, 70.0)
    low, high = bootstrap_ratio([9, 1, 5, 5], [10, 10, 10, 10])
    assert low < 50 < high
    assert bootstrap_ratio([9, 1, 5, 5], [10, 10, 10, 10]) == (low, high)  # deterministic
    diff = np.array([3.0, -1.0, 2.0, -0.5, 1.0, -2.0])
    sign = np.array([1, 1, 1, -1, -1, 1])
    lo, hi = bootstrap_selective(diff, sign, np.array([0, 0, 1, 1, 2, 2]), 50.0)
    assert 0 <= lo <= hi <= 100


def _geometry_study(root, fergi_public, participants=("001", "005")):
    """A copy of two release participants labelled as `geometry` features."""
    for p in participants:
        (root / "data" / p).mkdir(parents=True)
        for session in sorted((fergi_public / "data" / p).iterdir())[:4]:
            (root / "data" / p / session.name).symlink_to(session, target_is_directory=True)
    write_features_meta(root / "data", FeatureProvenance("geometry", estimator_version="2",
                                                         neutral_reference="baseline_clip"))
    return root


def test_raw_model_is_refused_on_geometry_features(fergi_public, tmp_path, capsys):
    study = _geometry_study(tmp_path / "study", fergi_public)
    assert feature_provenance(study).scale == "geometry-v2"
    raw = str(default_model_path(RAW_MODEL))
    out = tmp_path / "labels.jsonl"
    assert main(["annotate", "--data", str(study), "--model", raw, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "geometry v2" in err and "ir50-fergi" in err and "scale-free" in err
    assert not out.exists()
    # The default (scale-free) model is accepted on the same features.
    assert main(["annotate", "--data", str(study), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and {r["normalization"] for r in rows} == {"baseline_median"}
    # --force-scale annotates anyway, with a warning.
    assert main(["annotate", "--data", str(study), "--model", raw, "--out", str(out),
                 "--force-scale"]) == 0


def test_compatibility_rules():
    default = load_model()
    raw = load_model(default_model_path(RAW_MODEL))
    geometry = FeatureProvenance("geometry", estimator_version="2")
    check_compatibility(default, geometry)  # scale-free: any estimator
    check_compatibility(raw, RELEASE_SCALE)  # the release itself
    check_compatibility(raw, FeatureProvenance("unknown"))  # cannot check: a warning
    with pytest.raises(FergiError, match="geometry v2.*ir50-fergi"):
        check_compatibility(raw, geometry)
    with pytest.raises(FergiError, match="several AU estimators"):
        check_compatibility(raw, FeatureProvenance("mixed", source="1 file(s) a; 2 file(s) b"))
    old = AUcombValence(k=0.5, w_au4=0.5, threshold=0.26)  # a model file of fergi 0.1
    old.features_ = FeatureProvenance("unknown")
    check_compatibility(old, geometry)  # nothing to compare: a warning, not a refusal
    # Nor does a valence model fitted in the library on the user's own features.
    check_compatibility(AUcombValence(k=0.5, w_au4=0.5, threshold=0.26), geometry)
    ir50 = FeatureProvenance("ir50", estimator_version="1", checkpoint_sha256="ab" * 32)
    with pytest.raises(FergiError, match="ir50"):
        check_compatibility(raw, ir50)


def test_fit_records_the_features_it_was_fitted_on(fergi_public, tmp_path, capsys):
    study = _geometry_study(tmp_path / "study", fergi_public, participants=("001", "005", "006"))
    prep = study / "preparation" / "preprocessed_image_data"
    prep.mkdir(parents=True)
    for p in ("001", "005", "006"):
        (prep / f"{p}.csv").write_text((fergi_public / "preparation" / "preprocessed_image_data"
                                        / f"{p}.csv").read_text())
    out = tmp_path / "raw.json"
    assert main(["fit", "--data", str(study), "--normalization", "none", "--no-lopo",
                 "--screen", "off", "--out", str(out)]) == 0
    model = load_model(out)
    assert model.features_.scale == "geometry-v2" and model.normalization == "none"
    # A raw geometry model is refused on the release's IR-50 features ...
    with pytest.raises(FergiError, match="ir50-fergi.*geometry-v2"):
        check_compatibility(model, RELEASE_SCALE)
    # ... and fitting a raw model on features of several estimators is refused.
    write_features_meta(study / "data" / "006", FeatureProvenance("ir50", checkpoint_sha256="cd" * 32))
    assert main(["fit", "--data", str(study), "--normalization", "none", "--no-lopo",
                 "--screen", "off", "--out", str(tmp_path / "mixed.json")]) == 2
    assert "several AU estimators" in capsys.readouterr().err


def test_too_few_baselines_fall_back_skip_or_stop(fergi_public, release_frames, caplog):
    frames = release_frames[release_frames["participant"].isin(["001", "005"])]
    # Participant 005 keeps a single baseline clip: not enough for the baseline median.
    base = frames["clip"] == "baseline"
    first = frames[base & (frames["participant"] == "005")][["session", "image"]].iloc[0]
    drop = base & (frames["participant"] == "005") & ~(
        (frames["session"] == first["session"]) & (frames["image"] == first["image"]))
    data = reaction_data_from_frames(frames[~drop], provenance=RELEASE_SCALE)
    model = load_model()
    labels = model.annotate(data)
    by = labels.groupby("participant")["normalization"].unique()
    assert list(by["001"]) == ["baseline_median"] and list(by["005"]) == ["quantile"]
    assert "005" in caplog.text and "fallback" in caplog.text
    skipped = model.annotate(data, on_few_baselines="skip")
    assert set(skipped["participant"]) == {"001"}
    with pytest.raises(FergiError, match="005.*fewer than 3 valid baseline clips"):
        model.annotate(data, on_few_baselines="error")


def test_integrated_labels(fergi_public, release_frames):
    frames = release_frames[release_frames["participant"].isin(["001", "005"])]
    images = load_images(fergi_public)
    images = images[images["participant"].isin(["001", "005"])].reset_index(drop=True)
    # Image 1 of every session of 005 has no scores: its pairs keep reaction labels.
    holes = images.copy()
    holes.loc[(holes["participant"] == "005") & (holes["image"] == 1), "PickScore"] = np.nan
    data = reaction_data_from_frames(frames, holes, invalid=load_invalid_images(fergi_public),
                                     provenance=RELEASE_SCALE)
    model = load_model()
    plain = model.annotate(data)
    mixed = model.annotate(data, integrate=True)
    source = mixed.set_index(["participant", "session", "image_a", "image_b"])["label_source"]
    lacking = (source.index.get_level_values("participant") == "005") & (
        (source.index.get_level_values("image_a") == 1) | (source.index.get_level_values("image_b") == 1))
    assert (source[lacking] == "reactions").all() and (source[~lacking] == "integrated").all()
    # Integration changes some preferences (the scores carry information reactions lack).
    changed = (plain["preferred"].astype("Int64") != mixed["preferred"].astype("Int64")).sum()
    assert changed > 0.1 * len(plain)


def test_annotation_model_file_roundtrip(tmp_path, screened):
    small = screened.subset(screened.participants[:4])
    for model in (AnnotationModel(), AnnotationModel(Linear12Valence(c=1.0), fallback="none"),
                  AnnotationModel(default_valence("aucomb", "quantile"), "quantile")):
        model.fit(small)
        loaded = load_model(save_model(model, tmp_path / "m.json"))
        pd.testing.assert_frame_equal(loaded.annotate(small), model.annotate(small))
        assert loaded.features_.scale == "ir50-fergi"


def test_malformed_annotation_model_files_are_refused(tmp_path):
    document = json.loads(default_model_path().read_text())
    document["model"]["normalization"]["method"] = "zscore"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(FergiError, match="bad.json: malformed AnnotationModel model"):
        load_model(path)
    document = json.loads(default_model_path().read_text())
    document["model"]["integration"]["std"] = [0.0, 1.0, 1.0]
    path.write_text(json.dumps(document))
    with pytest.raises(FergiError, match="std > 0"):
        load_model(path)


def test_meta_files_in_session_folders_load_quietly(fergi_public, tmp_path, caplog):
    from fergi.datasets import load_frames

    session = tmp_path / "study" / "data" / "001" / "session_1"
    session.mkdir(parents=True)
    for src in sorted((fergi_public / "data" / "001" / "session_1").glob("*.csv")):
        (session / src.name).write_bytes(src.read_bytes())
    write_features_meta(session, FeatureProvenance("geometry", estimator_version="2"))
    with caplog.at_level("WARNING"):
        frames = load_frames(tmp_path / "study")
    assert len(frames) and "ignored" not in caplog.text
    assert feature_provenance(tmp_path / "study").scale == "geometry-v2"
