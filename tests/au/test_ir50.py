"""The ir50 estimator: weights of the published shape, output mapping, preprocessing.

No weights can be downloaded: every test creates and saves its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from fergi import FergiError
from fergi.au import (
    AU_OUTPUT_INDEX,
    IR50AUEstimator,
    build_ir50,
    create_au_estimator,
    extract_features,
    get_au_estimator_spec,
    list_au_estimators,
)
from fergi.datasets import AU_NAMES
from fergi.face import FaceAnalyzer, preprocess_face, reaction_frames
from fergi.video import write_video


@pytest.fixture(scope="module")
def estimator(checkpoint):
    return create_au_estimator("ir50", checkpoint=checkpoint, device="cpu")


def test_registry_carries_preprocessing_and_scale():
    assert list_au_estimators() == ["geometry", "ir50"]
    spec = get_au_estimator_spec("ir50")
    assert spec.input_kind == "face" and "112x112" in spec.preprocessing
    assert "0-5" in spec.output_scale
    assert get_au_estimator_spec("geometry").needs_reference
    with pytest.raises(FergiError, match="unknown AU estimator"):
        create_au_estimator("openface")
    with pytest.raises(FergiError, match="checkpoint"):
        create_au_estimator("ir50")


def test_published_architecture_shape():
    model = build_ir50()
    assert tuple(model.fc.weight.shape) == (64 * 6, 512 * 7 * 7)
    n_params = sum(p.numel() for p in model.parameters())
    assert 40e6 < n_params < 50e6  # IResNet-50 backbone (~43.6 M) + the 9.6 M head
    out = model.eval()(torch.zeros(2, 3, 112, 112))
    assert out.shape == (2, 384)


def test_output_mapping_is_au_minus_one(estimator):
    assert AU_OUTPUT_INDEX == tuple(int(a[2:]) - 1 for a in AU_NAMES)
    faces = np.random.default_rng(0).random((3, 112, 112, 3), dtype=np.float32)
    full = estimator.predict_outputs(faces)
    aus = estimator.predict(faces)
    assert aus.shape == (3, 12)
    np.testing.assert_allclose(aus, full[:, [0, 1, 3, 4, 5, 8, 11, 14, 16, 19, 24, 25]], rtol=1e-6)
    # The bias marks each output with its index: AU12 comes from output 11.
    np.testing.assert_allclose(aus.mean(axis=0), np.array(AU_OUTPUT_INDEX, float), atol=3.0)


@pytest.mark.slow
def test_loaded_weights_reproduce_the_saved_model(checkpoint, estimator):
    reference = build_ir50()
    reference.load_state_dict(torch.load(checkpoint, weights_only=True))
    reference.eval()
    faces = np.random.default_rng(1).random((3, 112, 112, 3), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(faces).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(estimator.predict_outputs(faces), expected, rtol=1e-4, atol=1e-4)
    # Batching does not change the result.
    small = IR50AUEstimator(checkpoint, device="cpu", batch_size=2)
    np.testing.assert_allclose(small.predict(faces), estimator.predict(faces), rtol=1e-4, atol=1e-4)


def test_wrapped_and_prefixed_state_dicts(checkpoint, tmp_path, estimator):
    state = torch.load(checkpoint, weights_only=True)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    faces = np.random.default_rng(2).random((2, 112, 112, 3), dtype=np.float32)
    np.testing.assert_allclose(
        IR50AUEstimator(wrapped, device="cpu").predict(faces), estimator.predict(faces), rtol=1e-5
    )


def test_wrong_checkpoints_are_clear_errors(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    state["fc.weight"] = torch.zeros(512, 512 * 7 * 7)
    state["fc.bias"] = torch.zeros(512)
    recognition = tmp_path / "arcface_r50.pth"
    torch.save(state, recognition)
    with pytest.raises(FergiError, match=r"fc.weight has shape \(512, 25088\)"):
        IR50AUEstimator(recognition, device="cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FergiError, match="junk.pth"):
        IR50AUEstimator(junk, device="cpu")
    with pytest.raises(FergiError, match="not found"):
        IR50AUEstimator(tmp_path / "missing.pth", device="cpu")
    partial = {
        k: v
        for k, v in torch.load(checkpoint, weights_only=True).items()
        if not k.startswith("layer4")
    }
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(FergiError, match="missing: layer4"):
        IR50AUEstimator(tmp_path / "partial.pth", device="cpu")


def test_backbone_weights_load_by_name_and_shape(tmp_path):
    # A face-recognition IResNet-50 as insightface saves it: 512-d embedding head.
    torch.manual_seed(5)
    recognition = build_ir50().state_dict()
    recognition = {
        k: torch.randn_like(v) if v.is_floating_point() else v for k, v in recognition.items()
    }
    recognition["fc.weight"] = torch.randn(512, 512 * 7 * 7)
    recognition["fc.bias"] = torch.randn(512)
    recognition["features.weight"] = torch.randn(512)
    path = tmp_path / "glint360k_r50.pth"
    torch.save(recognition, path)
    est = create_au_estimator("ir50", backbone=path, device="cpu")
    own = est.model_.state_dict()
    torch.testing.assert_close(own["layer3.7.conv1.weight"], recognition["layer3.7.conv1.weight"])
    torch.testing.assert_close(own["conv1.weight"], recognition["conv1.weight"])
    assert "fc.weight" not in est.loaded_ and "layer3.7.conv1.weight" in est.loaded_
    assert tuple(own["fc.weight"].shape) == (384, 25088)
    assert not torch.equal(own["fc.weight"][:5], recognition["fc.weight"][:5, :])
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(FergiError, match="no parameter matches"):
        create_au_estimator("ir50", backbone=tmp_path / "other.pth", device="cpu")


def test_uses_gpu_when_present(checkpoint):
    est = IR50AUEstimator(checkpoint)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert est.device == expected
    assert next(est.model_.parameters()).device.type == expected


@pytest.mark.slow
def test_extract_with_ir50_feeds_the_preprocessed_face(tmp_path, estimator):
    frames = list(reaction_frames(data.astronaut(), neutral_s=0.1, expression_s=0.0))
    frames.append(np.full_like(frames[0], 128))  # a frame without a face
    video = write_video(tmp_path / "clip.mp4", frames)
    table = extract_features(video, estimator=estimator, preprocessing="fergi")
    assert len(table) == 4 and table.attrs["preprocessing"] == "fergi"
    with FaceAnalyzer() as analyzer:
        from fergi.video import read_video

        first = read_video(video).frames[0]
        obs = analyzer.process(first)
    expected = estimator.predict(preprocess_face(first, obs.box, obs.landmarks)[None])[0]
    np.testing.assert_allclose(
        table.loc[0, list(AU_NAMES)].to_numpy(float), expected, rtol=1e-4, atol=1e-4
    )
    assert (table.loc[3, list(AU_NAMES)] == -1).all()
    assert table.loc[3, "face_detection_confidence_score"] == 0


@pytest.mark.slow
def test_fergi_extract_with_ir50_checkpoint(tmp_path):
    from fergi.face import save_synthetic_landmark_weights

    # A head that ignores the image and outputs its own index: the written file must
    # hold output AU-1 in the column of each AU, formatted like the release.
    model = build_ir50()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.arange(384, dtype=torch.float32) / 10)
    weights = tmp_path / "au_model.pth"
    torch.save(model.state_dict(), weights)
    frames = list(reaction_frames(data.astronaut(), neutral_s=0.1, expression_s=0.0))
    video = write_video(tmp_path / "clip.webm", frames)
    from fergi.cli._main import main

    out = tmp_path / "out"
    assert (
        main(
            [
                "extract",
                str(video),
                "--out",
                str(out),
                "--estimator",
                "ir50",
                "--checkpoint",
                str(weights),
                "--landmarks",
                str(save_synthetic_landmark_weights(tmp_path / "mfn.pth.tar", jitter=0.02)),
            ]
        )
        == 0
    )
    lines = (out / "clip_features.csv").read_text().splitlines()
    assert len(lines) == 4
    values = lines[1].split(",")[5:]
    # A video not named baseline* is written like the release's reaction clips: 3 decimals.
    assert values == [
        "0.000", "0.100", "0.300", "0.400", "0.500", "0.800",
        "1.100", "1.400", "1.600", "1.900", "2.400", "2.500",
    ]
