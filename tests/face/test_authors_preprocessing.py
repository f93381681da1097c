"""``preprocessing="authors"``: the FERGI authors' AU-model input, re-implemented exactly.

The equality with the authors' own code is checked by
``tools/check_au_preprocessing_against_authors.py`` (which needs a copy of their
repository): on these and other frames it found 0 difference in the crops, ratios and
IR-50 outputs. The pinned crops below (``tests/data/authors_crops.npz``, made by fergi's
path after that check; regenerate with ``python -m tests.face.test_authors_preprocessing``)
catch any later change to the path without the authors' code. The landmark weights are
synthetic in the authors' format: every output is the mean face
(``fergi.face.mean_face_68``), the same bits on every machine, so the alignment is a
real, non-degenerate one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from fergi import FergiError
from fergi.cli import main
from fergi.face import (
    AuthorsPreprocessor,
    build_mobilefacenet,
    henlm,
    load_mobilefacenet,
    margin_crop,
    pad_square,
    pose_ratios,
    pose_ratios_68,
    save_synthetic_landmark_weights,
)
from tests.helpers.paths import TEST_DATA

PINNED = TEST_DATA / "authors_crops.npz"


def _hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.asarray(Image.open(fh).convert("RGB"))


def _corner() -> np.ndarray:
    """The astronaut's face against the top-left corner: the margin box leaves the frame."""
    image = data.astronaut()
    corner = np.zeros_like(image)
    corner[:400, :340] = image[70:470, 160:500]
    return corner


def _rolled() -> np.ndarray:
    from skimage import transform

    image = transform.rotate(data.astronaut(), 20, center=(230, 140), mode="edge")
    return (image * 255).round().astype(np.uint8)


IMAGES = {"astronaut": data.astronaut, "grace_hopper": _hopper, "top_left_corner": _corner,
          "rolled_20deg": _rolled}


@pytest.fixture(scope="module")
def mean_face_weights(tmp_path_factory):
    return save_synthetic_landmark_weights(tmp_path_factory.mktemp("mfn") / "mfn.pth.tar")


@pytest.fixture(scope="module")
def prep(mean_face_weights):
    with_weights = AuthorsPreprocessor(mean_face_weights)
    yield with_weights
    with_weights.close()


def _compute(prep, name):
    return prep.process(IMAGES[name]())


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_authors_crops_are_pinned(prep, name):
    pinned = np.load(PINNED)
    result = _compute(prep, name)
    assert result.box == tuple(pinned[f"{name}_box"].tolist())
    assert result.score == pytest.approx(float(pinned[f"{name}_score"]), abs=1e-4)
    assert result.face.shape == (112, 112, 3) and result.face.dtype == np.uint8
    diff = np.abs(result.face.astype(int) - pinned[f"{name}_face"].astype(int))
    assert diff.max() == 0, f"{name}: {int((diff > 0).sum())} pixels differ, by up to {diff.max()}"
    np.testing.assert_allclose([result.pir, result.yir], pinned[f"{name}_ratios"], rtol=0, atol=1e-12)
    # The network input is ToTensor of the crop: float32 uint8 / 255.
    np.testing.assert_array_equal(result.tensor(), result.face.astype(np.float32) / np.float32(255))


def test_padding_and_rounding_quirks():
    # int() margins: a 95-px box gets -19 top, +4 bottom, -11/+11 sides (not 19.0/4.75/11.875).
    frame = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    crop = margin_crop(frame, (100, 50, 95, 95))
    assert crop.shape == (95 + 19 + 4, 95 + 22, 3)
    np.testing.assert_array_equal(crop, frame[31:149, 89:206])
    # Out of frame: the frame is padded black by the box's own h and w, then cropped.
    # Box (3, 4, 40, 40): margins -8/+2 rows, -5/+5 columns, so 4 rows and 2 columns out.
    crop = margin_crop(frame, (3, 4, 40, 40))
    assert crop.shape == (40 + 8 + 2, 40 + 10, 3)
    assert (crop[:4] == 0).all() and (crop[:, :2] == 0).all()
    np.testing.assert_array_equal(crop[4:, 2:], frame[0:46, 0:48])
    # Square padding puts the smaller half first.
    padded = pad_square(np.full((5, 2, 3), 7, np.uint8))
    assert padded.shape == (5, 5, 3) and (padded[:, 1:3] == 7).all() and (padded[:, 0] == 0).all()


def test_henlm_reads_the_rgb_array_as_bgr():
    import cv2

    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = henlm(face)
    # Only Y changes, and Y is computed with OpenCV's BGR weights on the RGB array.
    ycc_in = cv2.cvtColor(face, cv2.COLOR_BGR2YCrCb).astype(float)
    y = ycc_in[:, :, 0]
    equalised = cv2.equalizeHist(ycc_in[:, :, 0].astype(np.uint8)).astype(float)
    stretched = (y - y.min()) / (y.max() - y.min()) * 255
    expected = ycc_in.copy()
    expected[:, :, 0] = (0.5 * equalised + 0.5 * stretched).astype(np.uint8)
    expected = cv2.cvtColor(expected.astype(np.uint8), cv2.COLOR_YCrCb2BGR)
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, henlm(face[:, :, ::-1].copy())[:, :, ::-1])


def test_mobilefacenet_loads_the_authors_file_format(tmp_path):
    model = build_mobilefacenet()
    keys = model.state_dict()
    # The names of the authors' mobilefacenet.py (pytorch_face_landmark), with their shapes.
    expected = {
        "conv1.conv.weight": (64, 3, 3, 3),
        "conv1.prelu.weight": (64,),
        "conv2_dw.conv.weight": (64, 1, 3, 3),
        "conv_23.conv.conv.weight": (128, 64, 1, 1),
        "conv_23.conv_dw.bn.running_var": (128,),
        "conv_23.project.conv.weight": (64, 128, 1, 1),
        "conv_3.model.3.project.bn.weight": (64,),
        "conv_34.conv_dw.conv.weight": (256, 1, 3, 3),
        "conv_4.model.5.conv.prelu.weight": (256,),
        "conv_45.conv.conv.weight": (512, 128, 1, 1),
        "conv_5.model.1.project.conv.weight": (128, 256, 1, 1),
        "conv_6_sep.conv.weight": (512, 128, 1, 1),
        "output_layer.conv_6_dw.conv.weight": (512, 1, 7, 7),
        "output_layer.linear.weight": (136, 512),
        "output_layer.bn.running_mean": (136,),
    }
    assert {k: tuple(keys[k].shape) for k in expected} == expected
    assert not any(k.startswith(("conv_3.model.4", "conv_4.model.6", "conv_5.model.2")) for k in keys)
    # Their file: {"state_dict": ...} (DataParallel prefixes are tolerated too).
    path = save_synthetic_landmark_weights(tmp_path / "mobilefacenet_model_best.pth.tar", jitter=0.02)
    state = torch.load(path, weights_only=True)["state_dict"]
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "prefixed.pth.tar")
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        a = load_mobilefacenet(path)(x)
        b = load_mobilefacenet(tmp_path / "prefixed.pth.tar")(x)
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 136) and 0 < float(a.mean()) < 1 and float((a[0] - a[1]).abs().max()) > 1e-3


def test_missing_or_wrong_landmark_weights_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FERGI_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(FergiError, match="mobilefacenet_model_best.pth.tar.*--landmarks") as err:
        AuthorsPreprocessor()
    assert "\n" not in str(err.value)
    with pytest.raises(FergiError, match="landmark weights file not found"):
        AuthorsPreprocessor(tmp_path / "nope.pth.tar")
    state = build_mobilefacenet().state_dict()
    state.pop("output_layer.linear.weight")
    torch.save({"state_dict": state}, tmp_path / "cut.pth.tar")
    with pytest.raises(FergiError, match="cut.pth.tar: not a MobileFaceNet.*missing: output_layer"):
        load_mobilefacenet(tmp_path / "cut.pth.tar")
    (tmp_path / "junk.pth.tar").write_bytes(b"junk")
    with pytest.raises(FergiError, match="junk.pth.tar: not a PyTorch"):
        load_mobilefacenet(tmp_path / "junk.pth.tar")
    # Found in the model folder by its name.
    (tmp_path / "models").mkdir()
    save_synthetic_landmark_weights(tmp_path / "models" / "mobilefacenet_model_best.pth.tar")
    assert AuthorsPreprocessor().landmarks.endswith("mobilefacenet_model_best.pth.tar")


def test_no_face_and_injected_box(prep):
    assert prep.process(np.full((240, 320, 3), 90, np.uint8)).score == 0.0
    own = prep.process(data.astronaut())
    injected = prep.process(data.astronaut(), box=own.box, score=own.score)
    np.testing.assert_array_equal(own.face, injected.face)
    # A box wholly outside the padded frame leaves nothing: no face, as theirs cannot go on.
    assert prep.process(data.astronaut(), box=(2000, 2000, 10, 10)).face is None


def test_facemesh_ratios_are_in_the_same_oriented_frame(prep):
    """A rolled head keeps its ratios on FaceMesh, as on the authors' 68 points."""
    from fergi.face import detect_landmarks

    upright = pose_ratios(detect_landmarks(data.astronaut()))
    rolled = pose_ratios(detect_landmarks(_rolled()))
    assert rolled == pytest.approx(upright, abs=0.02)
    # The 68-point path on a mean face, rotated by 20 degrees: exactly the same ratios.
    from fergi.face import mean_face_68

    lm = mean_face_68() * 100
    c, s = np.cos(0.35), np.sin(0.35)
    turned = lm @ np.array([[c, -s], [s, c]]).T + 40
    assert pose_ratios_68(turned) == pytest.approx(pose_ratios_68(lm), abs=1e-12)


@pytest.mark.slow
def test_fergi_extract_ir50_with_the_authors_preprocessing(tmp_path, capsys):
    """An IR-50 in the authors' format and a MobileFaceNet with their key names, on a real
    face video: the features file, and ``preprocessing: authors`` in features_meta.json."""
    from fergi.au import build_ir50
    from fergi.face import write_reaction_video
    from fergi.video import read_video

    torch.manual_seed(0)
    model = build_ir50()
    with torch.no_grad():  # a head that shows which output went to which column
        model.fc.weight.mul_(1e-4)
        model.fc.bias.copy_(torch.arange(384, dtype=torch.float32) / 10)
    checkpoint = tmp_path / "checkpoint_epoch3.pth"
    torch.save(model.state_dict(), checkpoint)  # their format: a plain state_dict
    landmarks = save_synthetic_landmark_weights(tmp_path / "mobilefacenet_model_best.pth.tar",
                                                jitter=0.02)
    video = write_reaction_video(tmp_path / "reaction_clip_1.mp4", data.astronaut(),
                                 neutral_s=0.2, expression_s=0.1, smile=1.0)
    out = tmp_path / "out"
    args = ["extract", str(video), "--out", str(out), "--estimator", "ir50",
            "--checkpoint", str(checkpoint)]
    # Without the landmark weights (none in the model folder): a one-line error.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERGI_MODELS_DIR", str(tmp_path / "empty"))
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--landmarks" in err and len(err.splitlines()) == 1
    assert main([*args, "--landmarks", str(landmarks)]) == 0
    meta = json.loads((out / "features_meta.json").read_text())
    assert meta["preprocessing"] == "authors" and meta["estimator"] == "ir50"
    import pandas as pd

    table = pd.read_csv(out / "reaction_clip_1_features.csv")
    assert len(table) == 9 and (table["face_detection_confidence_score"] > 0.5).all()
    # The pose ratios are those of the authors' 68 points on each frame.
    frames = read_video(video, fps=30.0).frames
    fresh = AuthorsPreprocessor(landmarks)
    for i in (0, len(frames) - 1):
        expected = fresh.process(frames[i])
        written = table.loc[i, ["pitch_indicative_ratio", "yaw_indicative_ratio"]].to_numpy(float)
        np.testing.assert_allclose(written, [expected.pir, expected.yir], atol=5e-4)
    fresh.close()
    # Output AU - 1 of the head lands in each AU column (the weights barely move it).
    np.testing.assert_allclose(table["AU12"], 1.1, atol=0.05)
    np.testing.assert_allclose(table["AU26"], 2.5, atol=0.05)
    # The same folder with fergi's preprocessing would mix two AU scales: refused.
    assert main([*args, "--preprocessing", "fergi"]) == 2
    assert "preprocessing authors" in capsys.readouterr().err


def test_a_model_refuses_features_of_the_other_preprocessing(tmp_path):
    from fergi.datasets import FeatureProvenance
    from fergi.preference import RAW_MODEL, check_compatibility, default_model_path, load_model

    raw = load_model(default_model_path(RAW_MODEL))
    sha = "ab" * 32
    raw.features_ = FeatureProvenance("ir50", estimator_version="1", checkpoint_sha256=sha,
                                      preprocessing="authors")
    same = FeatureProvenance("ir50", estimator_version="1", checkpoint_sha256=sha,
                             preprocessing="authors")
    check_compatibility(raw, same)
    other = FeatureProvenance("ir50", estimator_version="1", checkpoint_sha256=sha,
                              preprocessing="fergi")
    with pytest.raises(FergiError, match="preprocessing 'fergi'.*preprocessing 'authors'") as err:
        check_compatibility(raw, other, where="feats")
    assert "\n" not in str(err.value) and "--preprocessing authors" in str(err.value)
    # A meta file without the field was written by fergi's own preprocessing.
    old = FeatureProvenance.from_dict({"estimator": "ir50", "estimator_version": "1",
                                       "checkpoint_sha256": sha})
    with pytest.raises(FergiError, match="preprocessing 'fergi'"):
        check_compatibility(raw, old)
    raw.features_ = old
    check_compatibility(raw, other)


def test_train_au_cache_holds_the_authors_faces(tmp_path, mean_face_weights, prep):
    """fergi-trained models see the authors' input: the cache stores their exact faces."""
    from PIL import Image

    from fergi.au.train import build_cache, read_datasets, write_synthetic_datasets

    disfa, plus = write_synthetic_datasets(tmp_path / "d", disfa_subjects=1, plus_subjects=1,
                                           frames=4)
    table = read_datasets(disfa, plus)
    table = table[table["dataset"] == "disfa_plus"].head(2)
    cache = build_cache(table, tmp_path / "c", progress=False, landmarks=mean_face_weights)
    assert cache.preprocessing == "authors" and cache.summary()["faces"] == 2
    for row, path in enumerate(table["path"]):
        image = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(cache.faces[row], prep.process(image).face)
    with pytest.raises(FergiError, match="preprocessing 'authors', not 'fergi'"):
        build_cache(table, tmp_path / "c", progress=False, preprocessing="fergi")


def _regenerate() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        prep = AuthorsPreprocessor(save_synthetic_landmark_weights(Path(tmp) / "mfn.pth.tar"))
        arrays = {}
        for name in IMAGES:
            result = _compute(prep, name)
            arrays[f"{name}_face"] = result.face
            arrays[f"{name}_box"] = np.array(result.box)
            arrays[f"{name}_score"] = np.array(result.score)
            arrays[f"{name}_ratios"] = np.array([result.pir, result.yir])
        prep.close()
    PINNED.parent.mkdir(exist_ok=True)
    np.savez_compressed(PINNED, **arrays)
    print(f"wrote {PINNED} ({PINNED.stat().st_size} bytes)")


if __name__ == "__main__":
    _regenerate()
