"""Training the paper's AU model (fergi.au.train, `fergi train-au`) on DISFA/DISFA+ layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fergi import FergiError
from fergi.au.train import (
    DISFA_AUS,
    DisfaPlusReader,
    DisfaReader,
    TrainConfig,
    au_loss,
    au_metrics,
    bce_weights,
    build_cache,
    class_counts,
    expand_weights,
    icc31,
    make_model,
    mse_weights,
    predict,
    read_datasets,
    save_model,
    subject_folds,
    train_model,
    write_synthetic_datasets,
)
from fergi.datasets import AU_NAMES
from tests.helpers.paths import BENCHMARKS, SRC
from tests.helpers.services import free_port

# Small, fast model and the learning rate it needs to learn in a few dozen steps.
TINY = dict(
    width=4, layers=(1, 1, 1, 1), batch_size=16, lr_head=3e-3, lr_backbone=3e-3, device="cpu"
)


@pytest.fixture(autouse=True)
def _few_threads():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(min(2, n))  # (1 under `make test`: see tests/conftest.py)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- readers


def _write_disfa(
    root: Path,
    subject="SN001",
    n=4,
    *,
    left="Videos_LeftCamera",
    right="Video_RightCamera",
    text=None,
):
    (root / left).mkdir(parents=True, exist_ok=True)
    (root / right).mkdir(parents=True, exist_ok=True)
    (root / left / f"LeftVideo{subject}_comp.avi").write_bytes(b"")
    (root / right / f"RightVideo{subject}_Comp.avi").write_bytes(b"")
    labels = root / "ActionUnit_Labels" / subject
    labels.mkdir(parents=True, exist_ok=True)
    for au in DISFA_AUS:
        body = text(au) if text else "".join(f"{f},{(f + au) % 6}\n" for f in range(1, n + 1))
        (labels / f"{subject}_au{au}.txt").write_bytes(body.encode())
    return root


def _write_plus(
    root: Path, subject="SN001", trial="A1_AU1_TrailNo_1", n=3, *, text=None, images=True
):
    imgs = root / "Images" / subject / trial
    imgs.mkdir(parents=True, exist_ok=True)
    if images:
        for i in range(n):
            (imgs / f"{i:03d}.jpg").write_bytes(b"")
    labels = root / "Labels" / subject / trial
    labels.mkdir(parents=True, exist_ok=True)
    for au in DISFA_AUS:
        rows = "".join(f"{i:03d}.jpg     {(i + au) % 6}\n" for i in range(n))
        body = text(au) if text else f"{subject}\n{trial}\n{rows}"
        (labels / f"AU{au}.txt").write_text(body)
    return root


def test_disfa_reader_reads_both_cameras_and_label_formats(tmp_path):
    def text(au):
        # A header, CRLF line ends, spaces and trailing blank lines are all tolerated.
        lines = ["frame,intensity"] + [f"{f}, {(f + au) % 6}" for f in range(1, 5)]
        return "\r\n".join(lines) + "\r\n\r\n  \r\n"

    root = _write_disfa(
        tmp_path / "disfa", left="videos_leftcamera", right="Videos_RightCamera", text=text
    )
    table = DisfaReader(root).frames()
    assert list(table.columns[:6]) == ["dataset", "subject", "trial", "frame", "path", "index"]
    assert list(table.columns[6:]) == list(AU_NAMES)
    assert len(table) == 8 and set(table["trial"]) == {"left", "right"}
    left = table[table["trial"] == "left"]
    assert left["frame"].tolist() == [1, 2, 3, 4] and left["index"].tolist() == [0, 1, 2, 3]
    assert left["AU12"].tolist() == [(f + 12) % 6 for f in range(1, 5)]
    assert left["path"].iloc[0].endswith("LeftVideoSN001_comp.avi")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.unlink(), r"SN001_au4\.txt: label file not found"),
        (lambda p: p.write_text("1,0\n2,0\n4,0\n"), r"SN001_au4\.txt:3: frame 3 has no label"),
        (
            lambda p: p.write_text("1,0\n2,7\n3,0\n4,0\n"),
            r"SN001_au4\.txt:2: intensity 7 outside 0-5",
        ),
        (lambda p: p.write_text("1,0\n2,x\n"), r"SN001_au4\.txt:2: cannot parse"),
    ],
)
def test_disfa_label_errors_name_file_and_line(tmp_path, edit, message):
    root = _write_disfa(tmp_path / "disfa")
    edit(root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt")
    with pytest.raises(FergiError, match=message):
        DisfaReader(root).frames()


def test_disfa_missing_video_or_subject_is_reported(tmp_path):
    root = _write_disfa(tmp_path / "disfa")
    with pytest.raises(FergiError, match=r"SN009: subject folder not found"):
        DisfaReader(root, subjects=["SN009"]).frames()
    (root / "Video_RightCamera" / "RightVideoSN001_Comp.avi").unlink()
    with pytest.raises(FergiError, match=r"RightVideoSN001_comp\.avi: video not found"):
        DisfaReader(root).frames()
    with pytest.raises(FergiError, match="DISFA folder not found"):
        DisfaReader(tmp_path / "nowhere").frames()


def test_disfa_plus_reader(tmp_path):
    root = _write_plus(tmp_path / "plus")
    _write_plus(root, trial="A2_AU2_TrailNo_1", n=2)
    table = DisfaPlusReader(root).frames()
    assert len(table) == 5 and set(table["trial"]) == {"A1_AU1_TrailNo_1", "A2_AU2_TrailNo_1"}
    first = table[table["trial"] == "A1_AU1_TrailNo_1"]
    assert first["AU1"].tolist() == [1, 2, 3] and (first["index"] == -1).all()
    assert first["path"].iloc[2].endswith("002.jpg")
    both = read_datasets(_write_disfa(tmp_path / "disfa"), root)
    assert set(both["dataset"]) == {"disfa", "disfa_plus"} and len(both) == 13


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("image_missing", r"AU1\.txt:3: image .*000\.jpg not found"),
        ("label_missing", r"AU6\.txt: image 002\.jpg has no label"),
        ("out_of_range", r"AU6\.txt:4: intensity 6 outside 0-5"),
        ("no_subject_images", r"Images/SN001: subject folder not found"),
        ("unlabelled_image", r"AU1\.txt: image .*003\.jpg has no label"),
    ],
)
def test_disfa_plus_errors(tmp_path, case, message):
    root = _write_plus(tmp_path / "plus")
    trial = "A1_AU1_TrailNo_1"
    au6 = root / "Labels" / "SN001" / trial / "AU6.txt"
    if case == "image_missing":
        (root / "Images" / "SN001" / trial / "000.jpg").unlink()
    elif case == "label_missing":
        au6.write_text("SN001\ntrial\n000.jpg  0\n001.jpg  0\n")
    elif case == "out_of_range":
        au6.write_text("SN001\ntrial\n000.jpg  0\n001.jpg  6\n002.jpg 0\n")
    elif case == "no_subject_images":
        import shutil

        shutil.rmtree(root / "Images" / "SN001")
    elif case == "unlabelled_image":
        (root / "Images" / "SN001" / trial / "003.jpg").write_bytes(b"")
    with pytest.raises(FergiError, match=message):
        DisfaPlusReader(root).frames()


# ----------------------------------------------------------------------------- loss


def test_mse_weights_are_the_authors_compute_weights_by_default():
    """Their utils.compute_weights(counts, 'inverse', AUs, groups=[[0, 1], [2, 3, 4, 5]]).

    Worked by hand from their code: every intensity gets 1 / (its group's count), and
    the six entries of an AU are divided by their sum.
    """
    counts = np.array([[6, 2, 1, 1, 0, 0], [0, 0, 5, 0, 0, 0], [3, 0, 0, 0, 0, 1]])
    w = mse_weights(counts)
    np.testing.assert_array_equal(w, mse_weights(counts, "authors"))
    # AU 1: groups {0,1} = 6 + 2 = 8, {2..5} = 1 + 1 = 2 -> entries
    # 1/8, 1/8, 1/2, 1/2, 1/2, 1/2; their sum 2/8 + 4/2 = 9/4;
    # (1/8) / (9/4) = 1/18 and (1/2) / (9/4) = 2/9 (2 * 1/18 + 4 * 2/9 = 1).
    np.testing.assert_allclose(w[0], [1 / 18, 1 / 18, 2 / 9, 2 / 9, 2 / 9, 2 / 9])
    # AU 2: {0,1} empty -> weight 0 (their `counts_grouped > 0`); {2..5} = 5 -> four
    # entries 1/5, sum 4/5 -> 1/4 each.
    np.testing.assert_allclose(w[1], [0, 0, 1 / 4, 1 / 4, 1 / 4, 1 / 4])
    # AU 3: {0,1} = 3, {2..5} = 1 -> 1/3, 1/3, 1, 1, 1, 1; sum 2/3 + 4 = 14/3;
    # -> 1/14 and 3/14.
    np.testing.assert_allclose(w[2], [1 / 14, 1 / 14, 3 / 14, 3 / 14, 3 / 14, 3 / 14])
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    # An AU never seen in training: zeros (their 0/0 would be NaN).
    np.testing.assert_array_equal(mse_weights(np.zeros((1, 6)))[0], np.zeros(6))
    with pytest.raises(FergiError, match="'eq16': unknown"):
        mse_weights(counts, "eq16")


def test_mse_term_on_a_batch_with_the_authors_and_the_printed_weights():
    import torch

    # One labelled AU (AU1), two frames with intensities 0 and 2, predicted 1 too
    # high each. Counts {0,1}: 1, {2..5}: 1 -> authors: all six entries 1/1, sum 6,
    # so w = 1/6 for both frames; eq. 16 printed: (2/1) / (2/1 + 4/1) = 1/3 and 2/3.
    # MSE term = mean over frames of w * 1^2: authors 1/6, printed (1/3 + 2/3) / 2 = 1/2.
    labels = np.full((2, 12), np.nan, np.float32)
    labels[:, 0] = [0, 2]
    target = np.full((2, 64), np.nan, np.float32)
    target[:, 0] = labels[:, 0]
    out = torch.zeros(2, 384)
    out[:, 0] = torch.tensor([1.0, 3.0])
    counts = class_counts(labels)
    w_bce = torch.from_numpy(expand_weights(bce_weights(counts), DISFA_AUS))
    expected = {"authors": 1 / 6, "paper-eq16": 1 / 2}
    for method, value in expected.items():
        w_mse = torch.from_numpy(expand_weights(mse_weights(counts, method), DISFA_AUS))
        mse = au_loss(out, torch.from_numpy(target), w_mse, w_bce)["mse"].item()
        assert mse == pytest.approx(value, rel=1e-6), method


def test_mse_and_bce_weights_match_hand_computation():
    counts = np.array([[6, 2, 1, 1, 0, 0], [0, 0, 5, 0, 0, 0]])
    w = mse_weights(counts, "paper-eq16")
    # Eq. 16 as printed. {0,1}: 8 samples, {2..5}: 2 samples -> (2/8) / (2/8 + 4/2) = 1/9
    # and 8/9: twice and four times the authors' 1/18 and 2/9.
    np.testing.assert_allclose(w[0], [1 / 9, 1 / 9, 8 / 9, 8 / 9, 8 / 9, 8 / 9])
    np.testing.assert_allclose(w[0], mse_weights(counts)[0] * [2, 2, 4, 4, 4, 4])
    # An AU with no low intensities: the high group takes the whole weight.
    np.testing.assert_allclose(w[1], [0, 0, 1, 1, 1, 1])
    wb = bce_weights(counts)
    # Eq. 17 and the authors' compute_weights(threshold_counts, 'inverse', AUs) agree.
    # Below j: 6, 8, 9, 10, 10; at or above j: 4, 2, 1, 0, 0.
    z = (
        Fraction(1, 6)
        + Fraction(1, 4)
        + Fraction(1, 8)
        + Fraction(1, 2)
        + Fraction(1, 9)
        + 1
        + Fraction(1, 10)
        + Fraction(1, 10)
    )
    assert z == Fraction(847, 360)
    neg = [
        Fraction(1, 6) / z,
        Fraction(1, 8) / z,
        Fraction(1, 9) / z,
        Fraction(1, 10) / z,
        Fraction(1, 10) / z,
    ]
    pos = [Fraction(1, 4) / z, Fraction(1, 2) / z, 1 / z, 0, 0]
    np.testing.assert_allclose(wb[0, :, 0], [float(v) for v in neg])
    np.testing.assert_allclose(wb[0, :, 1], [float(v) for v in pos])
    assert wb[0, 0, 1] == pytest.approx(90 / 847)
    np.testing.assert_allclose(wb[0].sum(), 1.0)
    np.testing.assert_array_equal(
        class_counts(np.array([[0, np.nan], [2.2, 3], [4.6, 3]])),
        [[1, 0, 1, 0, 0, 1], [0, 0, 0, 2, 0, 0]],
    )


def _loss_inputs(seed=0):
    import torch

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=(8, 12)).astype(np.float32)
    labels[0] = 0  # a neutral frame: the cosine has no direction there
    counts = class_counts(labels)
    w_mse = torch.from_numpy(expand_weights(mse_weights(counts), DISFA_AUS))
    w_bce = torch.from_numpy(expand_weights(bce_weights(counts), DISFA_AUS))
    target = np.full((8, 64), np.nan, np.float32)
    for k, au in enumerate(DISFA_AUS):
        target[:, au - 1] = labels[:, k]
    return torch.from_numpy(target), w_mse, w_bce


def _perfect(target, big=30.0):
    import torch

    y = torch.nan_to_num(target)
    logits = torch.where(y.unsqueeze(-1) >= torch.arange(1, 6), big, -big)
    return torch.cat([y, logits.reshape(len(y), -1)], dim=1)


def test_loss_is_minimal_for_a_perfect_prediction():
    import torch

    target, w_mse, w_bce = _loss_inputs()
    perfect = _perfect(target)
    parts = au_loss(perfect, target, w_mse, w_bce)
    # MSE 0, cosine 0 except the neutral frame's constant 1, cross entropy ~0.
    assert parts["mse"].item() == 0
    assert parts["cos"].item() == pytest.approx(1 / 8, abs=1e-6)
    assert parts["bce"].item() < 1e-10
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        noisy = perfect + 0.3 * torch.randn(perfect.shape, generator=gen)
        assert au_loss(noisy, target, w_mse, w_bce)["loss"] > parts["loss"]
    perfect.requires_grad_(True)
    au_loss(perfect, target, w_mse, w_bce)["loss"].backward()
    assert perfect.grad[:, :64].abs().max() < 1e-6


def test_cosine_term_is_a_true_cosine_and_unlabelled_slots_are_masked():
    import torch

    target, w_mse, w_bce = _loss_inputs(1)
    out = _perfect(target)
    out[:, :64] *= 3.0  # same direction, 3x the length
    # The printed eq. 13 without square roots would give 1 - 1/9 here.
    cos = au_loss(out, target, w_mse, w_bce)["cos"].item()
    assert cos == pytest.approx(1 / 8, abs=1e-6)  # only the neutral frame's constant term
    # Changing the 52 unlabelled slots (regression and ordinal) changes nothing.
    unlabelled = [i for i in range(64) if i + 1 not in DISFA_AUS]
    other = out.clone()
    other[:, unlabelled] = 100.0
    other.reshape(8, -1)[:, [64 + 5 * i + j for i in unlabelled for j in range(5)]] = -50.0
    a, b = au_loss(out, target, w_mse, w_bce), au_loss(other, target, w_mse, w_bce)
    for k in ("mse", "cos", "bce"):
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-6)
    other.requires_grad_(True)
    au_loss(other, target, w_mse, w_bce)["loss"].backward()
    assert torch.all(other.grad[:, unlabelled] == 0)


def test_icc_and_metrics():
    # Shrout & Fleiss ICC(3,1) by hand for rows (1,2), (2,3), (3,5): SS_total 28/3,
    # SS_rows 19/3, SS_raters 8/3, so MS_rows = 19/6, MS_error = (1/3)/2 = 1/6.
    assert icc31([1, 2, 3], [2, 3, 5]) == pytest.approx((19 / 6 - 1 / 6) / (19 / 6 + 1 / 6))
    assert icc31([0, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(
        1.0
    )  # a constant offset is consistent
    y = np.column_stack([np.arange(10) % 6, np.zeros(10)] + [np.zeros(10)] * 10)
    table = au_metrics(y, y + 0.5)
    assert table.loc["AU1", "icc"] == pytest.approx(1.0) and np.isnan(table.loc["AU2", "icc"])
    assert table.loc["AU1", "mae"] == pytest.approx(0.5 - 0.05)  # predictions clipped to 0-5
    assert table.loc["mean", "icc"] == pytest.approx(1.0)


def test_subject_folds_are_disjoint_and_cover_everyone():
    folds = subject_folds(["a", "b", "c", "d", "e", "a"], 3, seed=1)
    assert sorted(np.concatenate(folds)) == ["a", "b", "c", "d", "e"]
    assert sorted(len(f) for f in folds) == [1, 2, 2]
    with pytest.raises(FergiError, match="only 2 subjects"):
        subject_folds(["a", "b"], 3)


# ----------------------------------------------------------------------------- synthetic data


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """Synthetic DISFA (4 subjects x 2 cameras x 40 frames) and DISFA+ (2 x 40) trees, cached."""
    root = tmp_path_factory.mktemp("synthetic_au")
    disfa, plus = write_synthetic_datasets(
        root, disfa_subjects=4, plus_subjects=2, frames=40, seed=0
    )
    table = read_datasets(disfa, plus)
    cache = build_cache(table, root / "cache", progress=False, preprocessing="fergi")
    return {"root": root, "disfa": disfa, "plus": plus, "table": table, "cache": cache}


def test_synthetic_trees_use_the_real_layouts(synthetic):
    disfa, plus = synthetic["disfa"], synthetic["plus"]
    assert (disfa / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi").is_file()
    assert (disfa / "Video_RightCamera" / "RightVideoSN004_Comp.avi").is_file()
    lines = (disfa / "ActionUnit_Labels" / "SN002" / "SN002_au12.txt").read_text().splitlines()
    assert len(lines) == 40 and lines[0].split(",")[0] == "1"
    au4 = (plus / "Labels" / "SN005" / "A1_AU12_TrailNo_1" / "AU4.txt").read_text().splitlines()
    assert au4[:2] == ["SN005", "A1_AU12_TrailNo_1"] and au4[2].startswith("000.jpg ")
    table = synthetic["table"]
    assert len(table) == 4 * 80 + 2 * 40 and table["subject"].nunique() == 6
    # Both synthetic AUs cover the whole 0-5 scale; the others are labelled 0.
    assert set(table["AU12"]) == set(range(6)) and set(table["AU4"]) == set(range(6))
    assert (table[[n for n in AU_NAMES if n not in ("AU4", "AU12")]] == 0).all().all()
    # Subjects look different: their mean aligned faces differ by > 5 grey levels a pixel.
    faces = synthetic["cache"].faces
    subj = table["subject"].to_numpy()
    means = [faces[np.flatnonzero(subj == s)].astype(float).mean(0) for s in sorted(set(subj))]
    assert min(np.abs(a - b).mean() for i, a in enumerate(means) for b in means[i + 1 :]) > 5


def test_cache_matches_preprocessing_counts_failures_and_resumes(synthetic, tmp_path, monkeypatch):
    from PIL import Image

    from fergi.au.train import _cache
    from fergi.face import FaceAnalyzer, preprocess_face

    table = synthetic["table"]
    video_rows = table[(table["subject"] == "SN001") & (table["trial"] == "left")].head(3)
    image_rows = table[table["dataset"] == "disfa_plus"].head(3)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(grey)
    no_face = image_rows.head(1).assign(path=str(grey), trial="grey")
    past_end = video_rows.head(1).assign(frame=999, index=998)
    small = pd.concat([video_rows, past_end, image_rows, no_face], ignore_index=True)
    cache = build_cache(small, tmp_path / "c", progress=False, preprocessing="fergi")
    assert cache.summary() == {
        "frames": 8,
        "faces": 6,
        "no_face": 1,
        "not_in_video": 1,
        "pending": 0,
    }
    assert cache.usable.tolist() == [0, 1, 2, 4, 5, 6]
    np.testing.assert_array_equal(cache.labels([4]), small.loc[[4], list(AU_NAMES)].to_numpy())
    img = np.asarray(Image.open(image_rows["path"].iloc[0]).convert("RGB"))
    obs = FaceAnalyzer().process(img)
    expected = np.rint(preprocess_face(img, obs.box, obs.landmarks) * 255)
    assert np.abs(cache.faces[4].astype(float) - expected).max() <= 1

    # Resume: only the unfinished source is processed again.
    status = np.load(tmp_path / "c" / "status.npy")
    status[4:7] = -1
    np.save(tmp_path / "c" / "status.npy", status)
    seen = []
    real = _cache._process_unit
    monkeypatch.setattr(
        _cache, "_process_unit", lambda *a, **k: seen.append(len(a[2])) or real(*a, **k)
    )
    again = build_cache(small, tmp_path / "c", progress=False, preprocessing="fergi")
    assert seen == [3] and again.summary()["faces"] == 6
    np.testing.assert_array_equal(again.faces[4], cache.faces[4])
    with pytest.raises(FergiError, match="cache of other frames"):
        build_cache(small.head(5), tmp_path / "c", progress=False, preprocessing="fergi")


@pytest.mark.slow
def test_parallel_cache_equals_serial(synthetic, tmp_path):
    table = synthetic["table"]
    small = pd.concat(
        [table[table["trial"] == "right"].head(4), table[table["dataset"] == "disfa_plus"].head(4)]
    )
    serial = build_cache(small, tmp_path / "s", progress=False, preprocessing="fergi")
    parallel = build_cache(small, tmp_path / "p", workers=2, progress=False, preprocessing="fergi")
    np.testing.assert_array_equal(serial.table["status"], parallel.table["status"])
    np.testing.assert_array_equal(np.asarray(serial.faces), np.asarray(parallel.faces))


# ----------------------------------------------------------------------------- learning

HELD_OUT = ["SN002", "SN006"]  # a DISFA and a DISFA+ subject


def _split(cache):
    subj = cache.table["subject"].to_numpy()[cache.usable]
    test = np.isin(subj, HELD_OUT)
    return cache.usable[~test], cache.usable[test]


def _held_out_icc(model, cache):
    _, test = _split(cache)
    table = au_metrics(cache.labels(test), predict(model, cache.faces, test))
    return table.loc["AU12", "icc"], table.loc["AU4", "icc"]


@pytest.fixture(scope="module")
def trained(synthetic):
    cache = synthetic["cache"]
    train, _ = _split(cache)
    config = TrainConfig(epochs=6, **TINY)
    model, history = train_model(cache, train, config, progress=False)
    return model, history, config


@pytest.mark.slow
def test_training_learns_au12_and_au4_on_held_out_subjects(synthetic, trained):
    cache = synthetic["cache"]
    model, history, config = trained
    untrained = make_model(config).eval()
    au12, au4 = _held_out_icc(model, cache)
    u12, u4 = _held_out_icc(untrained, cache)
    print(
        f"held-out ICC(3,1): trained AU12 {au12:.2f} AU4 {au4:.2f}; untrained AU12 {u12:.2f} AU4 {u4:.2f}"
    )
    assert au12 > 0.5 and au12 > u12 + 0.4
    assert au4 > 0.3 and au4 > u4 + 0.3
    first, last = history["loss"].head(10).mean(), history["loss"].tail(10).mean()
    assert last < 0.5 * first
    assert len(history) == 6 * int(np.ceil(len(_split(cache)[0]) / 16))


@pytest.mark.slow
def test_shuffled_labels_do_not_learn(synthetic):
    """The control that makes the learning test meaningful: same recipe, labels shuffled."""
    cache = synthetic["cache"]
    train, _ = _split(cache)
    shuffled = cache.labels(train)[np.random.default_rng(0).permutation(len(train))]
    model, _ = train_model(
        cache, train, TrainConfig(epochs=6, **TINY), progress=False, labels=shuffled
    )
    au12, au4 = _held_out_icc(model, cache)
    print(f"held-out ICC(3,1) after training on shuffled labels: AU12 {au12:.2f} AU4 {au4:.2f}")
    assert not au12 > 0.5 and au12 < 0.3 and au4 < 0.3


@pytest.mark.slow
def test_saved_checkpoint_loads_in_the_ir50_estimator(synthetic, trained, tmp_path):
    from fergi.au import create_au_estimator

    cache = synthetic["cache"]
    model = trained[0]
    path = save_model(model, tmp_path / "tiny.pth")
    est = create_au_estimator("ir50", checkpoint=path, device="cpu")
    rows = cache.usable[:12]
    faces = np.asarray(cache.faces[rows], dtype=np.float32) / 255.0
    np.testing.assert_allclose(
        est.predict(faces), predict(model, cache.faces, rows), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_full_ir50_takes_a_training_step_and_round_trips(synthetic, tmp_path):
    import torch

    from fergi.au import create_au_estimator

    cache = synthetic["cache"]
    rows = cache.usable[:4]
    config = TrainConfig(batch_size=2, max_steps=1, device="cpu")
    before = make_model(config).state_dict()
    model, history = train_model(cache, rows, config, progress=False)
    assert len(history) == 1 and np.isfinite(history["loss"]).all()
    assert model.fc.weight.shape == (384, 512 * 7 * 7)
    after = model.state_dict()
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert not torch.equal(before["layer3.13.conv2.weight"], after["layer3.13.conv2.weight"])
    path = save_model(model, tmp_path / "full.pth")
    est = create_au_estimator("ir50", checkpoint=path, device="cpu")
    faces = np.asarray(cache.faces[rows[:2]], dtype=np.float32) / 255.0
    np.testing.assert_allclose(
        est.predict(faces), predict(model, cache.faces, rows[:2]), rtol=1e-4, atol=1e-4
    )


def test_backbone_weights_are_the_starting_point(synthetic, tmp_path):
    import torch

    from fergi.au import build_ir50

    donor = build_ir50(width=4, layers=(1, 1, 1, 1))
    # A face-recognition file: arcface's fc is (512, 25088)-like, i.e. does not match.
    state = {k: v for k, v in donor.state_dict().items() if not k.startswith("fc.")}
    state["fc.weight"] = torch.zeros(512, 4 * 8 * 49)
    torch.save(state, tmp_path / "r50.pth")
    model = make_model(TrainConfig(backbone=str(tmp_path / "r50.pth"), **TINY))
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert model.fc.weight.shape == (384, 4 * 8 * 49)
    with pytest.raises(FergiError, match="no parameter matches"):
        torch.save({"x": torch.zeros(2)}, tmp_path / "bad.pth")
        make_model(TrainConfig(backbone=str(tmp_path / "bad.pth"), **TINY))


# ----------------------------------------------------------------------------- command


def test_train_au_help_and_user_errors(tmp_path, capsys):
    from fergi.cli import main

    with pytest.raises(SystemExit):
        main(["train-au", "--help"])
    text = capsys.readouterr().out
    for phrase in (
        "--disfa",
        "--disfa-plus",
        "--backbone",
        "--cv",
        "--all",
        "ICC(3,1)",
        "torchrun",
        "run folder",
        "--mse-weights",
        "paper-eq16",
        "--amp",
    ):
        assert phrase in text
    assert "--no-amp" not in text
    assert (
        main(["train-au", "--disfa", str(tmp_path / "missing"), "--out", str(tmp_path / "m.pth")])
        == 2
    )
    assert "DISFA folder not found" in capsys.readouterr().err
    assert main(["train-au", "--out", str(tmp_path / "m.pth")]) == 2
    assert "error: --disfa/--disfa-plus" in capsys.readouterr().err
    assert main(["train-au", "--disfa", str(tmp_path)]) == 2
    assert "error: --out" in capsys.readouterr().err


def test_out_with_cv_but_without_all_is_refused_before_anything_runs(tmp_path, capsys):
    from fergi.cli import main

    out = tmp_path / "model.pth"
    # The dataset folder does not even exist: the check comes before any reading.
    args = ["train-au", "--disfa", str(tmp_path / "DISFA"), "--out", str(out), "--cv", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out") and "add --all" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "model_run").exists() and not out.exists()
    # With --all it goes on (here to the missing folder), and --cv alone needs no --out.
    assert main([*args, "--all"]) == 2
    assert "DISFA folder not found" in capsys.readouterr().err
    assert main(["train-au", "--disfa", str(tmp_path / "DISFA"), "--cv", "3"]) == 2
    assert "DISFA folder not found" in capsys.readouterr().err


def test_defaults_are_the_authors_recipe():
    config = TrainConfig()
    assert (config.mse_weights, config.amp) == ("authors", False)
    assert (config.epochs, config.batch_size, config.seed) == (3, 64, 42)
    assert (config.lr_head, config.lr_backbone, config.weight_decay) == (1e-4, 1e-5, 5e-4)


def test_a_run_folder_refuses_other_mse_weights_or_precision(tmp_path):
    from fergi.au.train._run import _check_config

    run = tmp_path / "run"
    run.mkdir()
    # A run folder written before --mse-weights existed: eq. 16 as printed, and amp.
    old = TrainConfig(**TINY).to_dict()
    old.pop("mse_weights")
    old["amp"] = True
    (run / "config.json").write_text(json.dumps(old))
    with pytest.raises(FergiError, match=r'other mse_weights, amp \(mse_weights="paper-eq16"'):
        _check_config(run, TrainConfig(**TINY), {})
    _check_config(run, TrainConfig(mse_weights="paper-eq16", amp=True, **TINY), {})
    assert json.loads((run / "config.json").read_text())["mse_weights"] == "paper-eq16"
    with pytest.raises(FergiError, match="other amp"):
        _check_config(run, TrainConfig(mse_weights="paper-eq16", **TINY), {})


def test_model_file_records_how_it_was_trained(synthetic, tmp_path):
    import torch

    from fergi.au import build_ir50, create_au_estimator
    from fergi.au.train import read_training_record

    cache = synthetic["cache"]
    rows = cache.usable[:32]
    backbone = tmp_path / "private" / "r50.pth"
    backbone.parent.mkdir()
    torch.save(build_ir50(width=4, layers=(1, 1, 1, 1)).state_dict(), backbone)
    config = TrainConfig(max_steps=1, mse_weights="paper-eq16", backbone=str(backbone), **TINY)
    model, _ = train_model(cache, rows, config, progress=False)
    path = save_model(model, tmp_path / "m.pth")
    record = read_training_record(path)
    assert record["trainer"] == "fergi train-au"
    assert (record["mse_weights"], record["precision"], record["frames"]) == (
        "paper-eq16",
        "fp32",
        32,
    )
    assert record["config"]["lr_head"] == 3e-3 and record["config"]["max_steps"] == 1
    assert record["config"]["backbone"] == "r50.pth"  # no local path in a shared file
    assert "device" not in record["config"]
    # Still a plain state_dict: strict loading as the authors do, and fergi's loader.
    state = torch.load(path, weights_only=True)
    build_ir50(width=4, layers=(1, 1, 1, 1)).load_state_dict(state, strict=True)
    est = create_au_estimator("ir50", checkpoint=path, device="cpu")
    faces = np.asarray(cache.faces[rows[:2]], dtype=np.float32) / 255.0
    np.testing.assert_allclose(
        est.predict(faces), predict(model, cache.faces, rows[:2]), rtol=1e-5, atol=1e-5
    )
    # A state_dict without a record (the authors' checkpoint, older fergi files).
    torch.save({k: v for k, v in state.items()}, tmp_path / "plain.pth")
    assert read_training_record(tmp_path / "plain.pth") is None
    with pytest.raises(FergiError, match="model file not found"):
        read_training_record(tmp_path / "missing.pth")


def test_amp_is_opt_in_and_recorded(synthetic, tmp_path):
    from fergi.au.train import read_training_record

    cache = synthetic["cache"]
    model, history = train_model(
        cache, cache.usable[:32], TrainConfig(max_steps=2, amp=True, **TINY), progress=False
    )
    assert np.isfinite(history["loss"]).all()
    # On the CPU, mixed precision is bfloat16 autocast.
    assert read_training_record(save_model(model, tmp_path / "m.pth"))["precision"] == "amp-bf16"


def test_a_last_batch_of_one_frame_is_trained_as_the_authors_loader_does(synthetic):
    cache = synthetic["cache"]
    # 17 frames, batch 16: their DataLoader (no drop_last) makes a 16 and a 1.
    _, history = train_model(
        cache, cache.usable[:17], TrainConfig(epochs=1, **TINY), progress=False
    )
    assert len(history) == 2 and np.isfinite(history["loss"]).all()


def _cli(synthetic, out: Path, *extra):
    return [
        "train-au",
        "--disfa", str(synthetic["disfa"]),
        "--disfa-plus", str(synthetic["plus"]),
        "--cache", str(synthetic["root"] / "cache"),
        "--out", str(out),
        "--width", "4", "--layers", "1,1,1,1", "--batch-size", "16",
        "--lr-head", "3e-3", "--lr-backbone", "3e-3", "--device", "cpu",
        "--loader-workers", "0", "--no-progress", "--preprocessing", "fergi",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_cross_validation_prints_the_table_and_fills_the_run_folder(synthetic, tmp_path, capsys):
    from fergi.cli import main

    out = tmp_path / "model.pth"
    assert main(_cli(synthetic, out, "--cv", "2", "--all", "--epochs", "1")) == 0
    printed = capsys.readouterr().out
    assert "2-fold cross-validation" in printed and "ICC(3,1)" in printed
    assert any(line.startswith("AU12 ") for line in printed.splitlines())
    run = tmp_path / "model_run"
    for name in (
        "config.json",
        "losses.csv",
        "epoch_losses.csv",
        "eval.csv",
        "eval.json",
        "predictions.csv",
        "learning_curve.png",
    ):
        assert (run / name).is_file(), name
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["folds"] == 2 and set(evaluation["metrics"]) == {*AU_NAMES, "mean"}
    assert set(evaluation["metrics"]["AU12"]) >= {"icc", "pearson", "mae"}
    predictions = pd.read_csv(run / "predictions.csv")
    # Subject-independent: every subject is predicted by exactly one fold.
    assert len(predictions) == 400 and (predictions.groupby("subject")["fold"].nunique() == 1).all()
    epochs = pd.read_csv(run / "epoch_losses.csv")
    assert sorted(epochs["fold"].unique()) == [0, 1, 2]
    assert json.loads((run / "config.json").read_text())["lr_head"] == 3e-3
    assert out.is_file()
    # Same run folder, other recipe: refused rather than mixed.
    assert main(_cli(synthetic, out, "--epochs", "1", "--seed", "7")) == 2
    assert "trained with other seed" in capsys.readouterr().err


def _run_cli(args, env_extra=None):
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "OMP_NUM_THREADS": "2",
        **(env_extra or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "fergi", *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def synthetic_small(tmp_path_factory):
    """A smaller synthetic DISFA (2 subjects x 2 cameras x 16 frames) and DISFA+ (1 x 16),
    cached: 80 frames, 5 steps of 16 an epoch, for the runs in subprocesses (a step of the
    tiny model costs about a CPU-second; the resume rules do not need more of them)."""
    root = tmp_path_factory.mktemp("synthetic_au_small")
    disfa, plus = write_synthetic_datasets(
        root, disfa_subjects=2, plus_subjects=1, frames=16, seed=0
    )
    build_cache(read_datasets(disfa, plus), root / "cache", progress=False, preprocessing="fergi")
    return {"root": root, "disfa": disfa, "plus": plus}


@pytest.mark.slow
def test_killed_training_resumes_and_matches_an_uninterrupted_ddp_run(synthetic_small, tmp_path):
    import torch

    from fergi.au.train._train import KILL_ENV

    synthetic = synthetic_small
    steps_per_epoch = 5  # 80 frames, batch 16
    out = tmp_path / "a" / "model.pth"
    # Checkpoints at each epoch's end and every 2 steps; killed at step 1 of epoch 2.
    args = _cli(synthetic, out, "--epochs", "2", "--save-every", "2")
    killed = _run_cli(args, {KILL_ENV: str(steps_per_epoch + 1)})
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = torch.load(out.parent / "model_run" / "final" / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"], len(state["history"])) == (1, 0, steps_per_epoch)
    assert not out.exists()
    # Killed again mid-epoch, after the step-2 checkpoint of epoch 2.
    killed = _run_cli(args, {KILL_ENV: str(steps_per_epoch + 3)})
    assert killed.returncode == -9 and "resuming at epoch 2, step 0" in killed.stderr
    state = torch.load(out.parent / "model_run" / "final" / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"], len(state["history"])) == (1, 2, steps_per_epoch + 2)

    resumed = _run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at epoch 2, step 2" in resumed.stderr
    losses = pd.read_csv(out.parent / "model_run" / "losses.csv")
    assert losses["step"].tolist() == list(range(1, 2 * steps_per_epoch + 1))

    # The same run without a kill, through the DistributedDataParallel path (torchrun's
    # environment, world size 1, gloo): the very same weights.
    ref = tmp_path / "b" / "model.pth"
    env = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    whole = _run_cli(_cli(synthetic, ref, "--epochs", "2"), env)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "DistributedDataParallel on 1 process(es), backend gloo" in whole.stderr
    a, b = torch.load(out, weights_only=True), torch.load(ref, weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_benchmark_quick_mode_prints_figures():
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_train_au.py"),
            "--quick",
            "--threads",
            "2",
        ],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import re

    ips = re.search(r"cpu \(2 threads\)\s+([\d.]+) images/s", result.stdout)
    fps = re.search(r"preprocessing cache: 18 frames, ([\d.]+) frames/s", result.stdout)
    assert ips and float(ips.group(1)) > 0, result.stdout
    assert fps and float(fps.group(1)) > 0, result.stdout


def test_prepare_only_reports_the_cache_and_trains_nothing(synthetic, tmp_path, capsys):
    from fergi.cli import main

    out = tmp_path / "model.pth"
    assert main(_cli(synthetic, out, "--prepare-only")) == 0
    printed = capsys.readouterr().out
    assert "frames: 400 labelled, 400 with a face, 0 without" in printed
    assert not out.exists() and not (tmp_path / "model_run" / "final").exists()


def test_cuda_requested_without_a_gpu_is_a_user_error():
    import torch

    from fergi.au.train._train import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(FergiError, match="--device cuda: CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"
