"""Preference models on small synthetic tables: pairs, grid search, ensemble, FAU-Net, files."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from fergi import FergiError
from fergi.datasets import ACTIVATION_COLUMNS, SCORE_COLUMNS
from fergi.preference import (
    RAW_MODEL,
    AnnotationModel,
    AUcombValence,
    EnsembleScore,
    FAUNet,
    IntegratedScore,
    annotate_pairs,
    aucomb_scores,
    coverage_curve,
    default_model_path,
    load_model,
    lopo_evaluate,
    make_pairs,
    save_model,
    write_jsonl,
)

SCORES = SCORE_COLUMNS


def synthetic_table(n_participants=5, n_sessions=6, seed=0, signal=1.0):
    """Images whose AU12 rises and AU4 falls with rank (plus noise), as in real reactions."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(1, n_participants + 1):
        for s in range(1, n_sessions + 1):
            n = int(rng.integers(2, 6))
            ranks = rng.permutation(n) + 1
            for i, r in enumerate(ranks, start=1):
                row = {"participant": f"{p:03d}", "session": s, "image": i, "rank_score": float(r)}
                for c in ACTIVATION_COLUMNS:
                    row[c] = float(rng.gamma(1.0, 0.3))
                row["AU12_activation_value"] = max(0.0, signal * 0.4 * r + rng.normal(0, 0.6))
                row["AU4_activation_value"] = max(0.0, signal * 0.4 * (6 - r) + rng.normal(0, 0.6))
                for j, c in enumerate(SCORES):
                    row[c] = 10.0 * j + 0.3 * r + rng.normal(0, 1.0)
                rows.append(row)
    return pd.DataFrame(rows)


def test_make_pairs_within_session_and_labelled_by_rank():
    table = pd.DataFrame({
        "participant": ["001"] * 4 + ["002"] * 2,
        "session": [1, 1, 1, 2, 1, 1],
        "image": [1, 2, 3, 1, 1, 2],
        "rank_score": [3.0, 1.0, 3.0, 2.0, 1.0, 2.0],
    })
    pairs = make_pairs(table.sample(frac=1, random_state=0))  # row order must not matter
    got = sorted(map(tuple, pairs[["participant", "session", "image_a", "image_b", "preferred"]].to_numpy().tolist()))
    # (1,3) is a tie and session 2 has one image: neither gives a pair.
    assert got == [("001", 1, 1, 2, 1), ("001", 1, 2, 3, 3), ("002", 1, 1, 2, 2)]


def test_zero_score_difference_counts_as_wrong():
    curve = coverage_curve(np.array([0.0, 0.0, 1.0, -1.0]), np.array([1, -1, 1, 1]))
    assert curve["accuracy"][-1] == 25.0  # only the 1.0 difference is right
    assert curve["n_pairs"][0] == 1 and curve["n_pairs"][-1] == 4


def test_coverage_keeps_largest_differences_first():
    diff = np.array([0.1, -5.0, 2.0, -0.2])
    sign = np.array([-1, -1, -1, -1])
    curve = coverage_curve(diff, sign, percents=(25, 50, 75, 100))
    assert curve["accuracy"] == [100.0, 50.0, 66.6667, 50.0]


def _brute_force_fit(table, ks, ws, ds, penalty=2.0, formula="paper"):
    pairs = make_pairs(table)
    position = {key: n for n, key in enumerate(zip(table.participant, table.session, table.image, strict=True))}
    ia = np.array([position[k] for k in zip(pairs.participant, pairs.session, pairs.image_a, strict=True)])
    ib = np.array([position[k] for k in zip(pairs.participant, pairs.session, pairs.image_b, strict=True)])
    sign = np.where(pairs.preferred == pairs.image_a, 1, -1)
    best, best_obj = None, -np.inf
    for k, w, d in itertools.product(ks, ws, ds):
        s = aucomb_scores(table["AU4_activation_value"].to_numpy(), table["AU12_activation_value"].to_numpy(), k, w, formula)
        diff = s[ia] - s[ib]
        sel = np.abs(diff) >= d
        ok = (diff * sign > 0) & sel
        obj = ok.sum() - penalty * (sel.sum() - ok.sum())
        if obj > best_obj:
            best, best_obj = (k, w, d), obj
    return best


@pytest.mark.parametrize("formula", ["paper", "published_code"])
def test_aucomb_grid_search_matches_brute_force(formula):
    table = synthetic_table(seed=3, signal=0.3)
    ks, ws, ds = (0.3, 0.5, 1.0, 2.0), (0.0, 0.3, 0.5, 1.0), tuple(np.arange(0, 0.62, 0.04))
    model = AUcombValence(k_grid=ks, w_au4_grid=ws, threshold_grid=ds, formula=formula).fit(table)
    assert (model.k_, model.w_au4_, model.threshold_) == _brute_force_fit(table, ks, ws, ds, formula=formula)


def test_aucomb_tie_breaking_takes_first_grid_point():
    table = synthetic_table(seed=1)
    # All thresholds above every difference select nothing: objective 0 everywhere -> first point.
    model = AUcombValence(k_grid=(0.2, 0.1), w_au4_grid=(0.7, 0.3), threshold_grid=(5.0, 3.0)).fit(table)
    assert (model.k_, model.w_au4_, model.threshold_) == (0.2, 0.7, 5.0)
    assert model.n_correct_ == model.n_incorrect_ == 0


def test_aucomb_fixed_parameters_need_no_fit_and_abstain():
    table = synthetic_table(seed=2)
    model = AUcombValence(k=0.5, w_au4=0.5, threshold=0.26)
    pred = model.predict(table)
    assert set(pred.columns) == {"participant", "session", "image_a", "image_b", "preferred",
                                 "score_difference", "confident"}
    assert (pred["confident"] == (pred["score_difference"].abs() >= 0.26)).all()
    winner = np.where(pred["score_difference"] > 0, pred["image_a"], pred["image_b"])
    assert (pred["preferred"].to_numpy() == winner).all()
    with pytest.raises(FergiError, match="not fitted"):
        AUcombValence().score_images(table)


def test_lopo_fast_path_equals_refitting_each_fold():
    table = synthetic_table(n_participants=4, seed=4, signal=0.5)
    grids = {"k_grid": (0.2, 0.5, 1.0), "w_au4_grid": (0.2, 0.5, 0.8), "threshold_grid": (0.0, 0.1, 0.2, 0.3)}
    result = lopo_evaluate(AUcombValence(**grids), table)
    for label, fitted in result.estimators.items():
        ref = AUcombValence(**grids).fit(table[table.participant != label])
        assert (fitted.k_, fitted.w_au4_, fitted.threshold_) == (ref.k_, ref.w_au4_, ref.threshold_)
        held = table[table.participant == label]
        pred = ref.predict(held)
        sel = pred[pred.confident]
        truth = make_pairs(held).set_index(["session", "image_a", "image_b"])["preferred"]
        right = (sel.set_index(["session", "image_a", "image_b"])["preferred"] == truth.reindex(sel.set_index(["session", "image_a", "image_b"]).index)).sum()
        row = result.per_participant.set_index("participant").loc[label]
        assert row.n_selected == len(sel) and row.n_correct == right
    assert result.pooled["n_pairs"] == len(make_pairs(table))


def test_ensemble_zscores_on_training_images_with_ddof1():
    table = synthetic_table(seed=5)
    model = EnsembleScore(weight_grid=((1.0, 0.0, 0.0),)).fit(table)
    x = table["ImageReward_score"]
    assert np.allclose(model.score_images(table), (x - x.mean()) / x.std(ddof=1))
    assert np.isclose(model.std_[0], x.std(ddof=1))


def test_ensemble_picks_first_best_weights():
    table = synthetic_table(seed=6)
    grid = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))
    model = EnsembleScore(weight_grid=grid).fit(table)
    counts = []
    for w in grid[:2]:
        counts.append(EnsembleScore(weight_grid=(w,)).fit(table).n_correct_)
    assert tuple(model.weights_) == grid[int(np.argmax(counts))]


def test_integrated_score_improves_or_keeps_training_accuracy():
    table = synthetic_table(seed=7, signal=1.0)
    table["valence"] = AUcombValence(k=0.5, w_au4=0.5, threshold=0.0).score_images(table)
    model = IntegratedScore(base="ImageReward_score", valence="valence").fit(table)
    pairs = make_pairs(table)
    def acc(a):
        z = (table.ImageReward_score - model.mean_) / model.std_ + a * table.valence
        s = pd.Series(z.to_numpy(), pd.MultiIndex.from_frame(table[["participant", "session", "image"]]))
        sa = s.loc[list(zip(pairs.participant, pairs.session, pairs.image_a, strict=True))].to_numpy()
        sb = s.loc[list(zip(pairs.participant, pairs.session, pairs.image_b, strict=True))].to_numpy()
        return ((sa - sb) * np.where(pairs.preferred == pairs.image_a, 1, -1) > 0).sum()
    assert acc(model.a_) == max(acc(a) for a in model.a_grid)
    assert acc(model.a_) >= acc(0.0)
    # With an estimator as the base, it is fitted on the same images.
    nested = IntegratedScore(base=EnsembleScore(), valence="valence").fit(table)
    assert hasattr(nested, "base_") and nested.score_images(table).shape == (len(table),)


def _reference_faunet(table, epochs, seed, n_models=1):
    """The authors' network and training loop (ordered pairs, BCELoss), for comparison."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.ModuleList()
            for _ in range(12):
                lin = nn.Linear(1, 1)
                nn.init.constant_(lin.weight, 1)
                nn.init.constant_(lin.bias, -1)
                self.pre.append(lin)
            self.hidden = nn.Linear(12, 16)
            self.out = nn.Linear(28, 1)

        def forward(self, x):
            x = torch.sigmoid(torch.cat([lin(x[:, i:i + 1]) for i, lin in enumerate(self.pre)], 1))
            x = torch.sigmoid(torch.cat([x, self.hidden(x)], 1))
            return self.out(x)

    torch.manual_seed(seed)
    nets = [Net() for _ in range(n_models)]
    net = nets[-1]
    t = table.sort_values(["participant", "session", "image"]).reset_index(drop=True)
    x = torch.tensor(t[list(ACTIVATION_COLUMNS)].to_numpy(np.float32))
    i, j = [], []
    for _, g in t.groupby(["participant", "session"]):
        for a, b in itertools.permutations(g.index, 2):
            if t.rank_score[a] != t.rank_score[b]:
                i.append(a)
                j.append(b)
    target = torch.tensor((t.rank_score[i].to_numpy() > t.rank_score[j].to_numpy()).astype(np.float32))[:, None]
    i, j = torch.tensor(i), torch.tensor(j)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.BCELoss()(torch.sigmoid(net(x[i]) - net(x[j])), target)
        loss = loss + 1e-4 * sum(p.abs().sum() for p in net.parameters())
        loss.backward()
        opt.step()
    with torch.no_grad():
        return net(x)[:, 0].numpy(), t


def test_faunet_equals_the_authors_training_loop():
    table = synthetic_table(n_participants=3, seed=8)
    ref_scores, t = _reference_faunet(table, epochs=25, seed=0)
    model = FAUNet(epochs=25).fit(table)
    assert np.allclose(model.score_images(t), ref_scores, atol=2e-5)


def test_faunet_stacked_folds_equal_sequential_networks():
    table = synthetic_table(n_participants=3, seed=9)
    fits = FAUNet(epochs=15)._lopo_fit(
        table.sort_values(["participant", "session", "image"]).reset_index(drop=True), None,
        __import__("fergi.preference._pairs", fromlist=["pair_index"]).pair_index(
            table.sort_values(["participant", "session", "image"]).reset_index(drop=True)))
    # Fold 2 (participant 002 held out) starts from the second network built after the seed.
    train = table[table.participant != "002"]
    ref_scores, t = _reference_faunet(train, epochs=15, seed=0, n_models=2)
    assert np.allclose(fits["002"].score_images(t), ref_scores, atol=2e-5)


@pytest.mark.parametrize("model", [AUcombValence(), FAUNet(epochs=5)])
def test_model_file_roundtrip(tmp_path, model):
    table = synthetic_table(seed=10)
    model.fit(table)
    path = save_model(model, tmp_path / "m.json", metadata={"note": "test"})
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert np.allclose(loaded.score_images(table), model.score_images(table))
    assert loaded.metadata_ == {"note": "test"}
    assert save_model(model, tmp_path / "dir") == tmp_path / "dir" / "model.json"
    assert type(load_model(tmp_path / "dir")) is type(model)


def test_shipped_models_are_the_screened_release_fits():
    model = load_model()
    assert isinstance(model, AnnotationModel) and model.scale_free
    assert model.normalization == "baseline_median"
    assert isinstance(model.valence_, AUcombValence)
    assert model.fallback_ is not None and model.fallback_.normalization == "quantile"
    assert model.integration_ is not None
    assert model.features_.scale == "ir50-fergi"
    assert model.metadata_["n_participants"] == 30
    raw = load_model(default_model_path(RAW_MODEL))
    assert raw.normalization == "none"
    # The paper's AUcomb on all 3,534 pairs of the 30 screened participants.
    assert (raw.valence_.k_, raw.valence_.w_au4_, raw.valence_.threshold_) == (0.5, 0.5, 0.26)


def test_wrong_model_files_give_clear_errors(tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"a": 1}\n{"b": 2}\n')
    with pytest.raises(FergiError, match="labels.jsonl: not a fergi model file"):
        load_model(labels)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "fergi-preference-model", "kind": "RandomForest", "model": {}}))
    with pytest.raises(FergiError, match="unknown model kind 'RandomForest'"):
        load_model(other)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"weights": [1, 2]}))
    with pytest.raises(FergiError, match="not a fergi preference model file"):
        load_model(plain)
    with pytest.raises(FergiError, match="no such model file"):
        load_model(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"formula": "mystery"}, "formula must be one of"),
        ({"k": float("nan")}, "k must be a positive number"),
        ({"w_au4": 1.5}, "w_au4 must be between 0 and 1"),
        ({"threshold": -1}, "threshold must be a number >= 0"),
    ],
)
def test_invalid_model_parameters_are_refused_on_load(tmp_path, change, message):
    model = AUcombValence().fit(synthetic_table(seed=12))
    document = json.loads(save_model(model, tmp_path / "fitted.json").read_text())
    document["model"].update(change)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(document))
    with pytest.raises(FergiError, match=f"edited.json: malformed AUcombValence model \\({message}"):
        load_model(path)


def test_annotate_needs_only_activations_and_reports_bad_tables(tmp_path):
    table = synthetic_table(seed=11)
    bare = table[["participant", "session", "image", "AU4_activation_value", "AU12_activation_value"]]
    labels = annotate_pairs(bare)  # the paper's raw AUcomb (release scale) by default
    with pytest.raises(FergiError, match="baseline clips.*annotate_reactions"):
        annotate_pairs(bare, load_model())
    n_expected = sum(len(g) * (len(g) - 1) // 2 for _, g in bare.groupby(["participant", "session"]))
    assert len(labels) == n_expected
    path = write_jsonl(labels, tmp_path / "labels.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(lines[0]) == {"participant", "session", "image_a", "image_b", "preferred",
                             "score_difference", "above_threshold"}
    assert sum(r["above_threshold"] for r in lines) == int(labels.confident.sum())
    with pytest.raises(FergiError, match="missing column.*AU12_activation_value"):
        annotate_pairs(bare.drop(columns=["AU12_activation_value"]))
    one = pd.concat([bare, bare.iloc[[0]].assign(participant="099")], ignore_index=True)
    with pytest.raises(FergiError, match="participant.*099.*only one valid image"):
        annotate_pairs(one)
    with pytest.raises(FergiError, match="non-numeric"):
        annotate_pairs(bare.assign(AU4_activation_value="x"))
    # An image without a valid reaction (NaN activations) is left out, not fatal.
    holes = bare.copy()
    holes.loc[0, "AU4_activation_value"] = np.nan
    assert len(annotate_pairs(holes)) < len(labels)
