"""Image generators of the study: placeholder, folder and (tiny, random) diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fergi import FergiError
from fergi.study.content import (
    GeneratedImage,
    available_generators,
    create_generator,
    is_black_image,
)
from fergi.study.content import prompt_folder_name as folder_name

PROMPT = "A realistic photo of a furry Calico Cat sleeping with a flower."


# --------------------------------------------------------------------------- placeholder


def test_placeholder_is_deterministic_and_images_differ():
    gen = create_generator("placeholder", size=128)
    first = gen.generate(PROMPT, 5, seed=42)
    again = gen.generate(PROMPT, 5, seed=42)
    assert [g.seed for g in first] == [42, 43, 44, 45, 46]
    assert all(isinstance(g, GeneratedImage) and not g.invalid for g in first)
    arrays = [np.asarray(g.image) for g in first]
    assert all(a.shape == (128, 128, 3) and a.dtype == np.uint8 for a in arrays)
    for a, b in zip(arrays, (np.asarray(g.image) for g in again), strict=True):
        np.testing.assert_array_equal(a, b)
    # the five images of one request are visibly different from each other
    for i in range(5):
        for j in range(i + 1, 5):
            diff = np.abs(arrays[i].astype(int) - arrays[j].astype(int)).mean()
            assert diff > 10, (i, j, diff)
    # another prompt gives other pictures for the same seed
    other = gen.generate("A painting of a dog in the style of Van Gogh.", 1, seed=42)[0]
    assert np.abs(np.asarray(other.image).astype(int) - arrays[0]).mean() > 10
    assert first[2].meta["prompt"] == PROMPT and first[2].meta["index"] == 2


def test_placeholder_records_random_seed_and_calls_back():
    gen = create_generator("placeholder", size=(96, 64))
    seen = []
    images = gen.generate("a red bird", 3, on_image=lambda i, g: seen.append((i, g.seed)))
    assert seen == [(i, images[0].seed + i) for i in range(3)]
    assert images[0].image.size == (96, 64)
    assert images[1].meta["seed"] == images[1].seed


def test_placeholder_invalid_indices_are_black_and_flagged():
    images = create_generator("placeholder", size=64, invalid_indices=[1]).generate("x", 3, seed=0)
    assert [g.invalid for g in images] == [False, True, False]
    assert is_black_image(images[1].image) and not is_black_image(images[0].image)


def test_create_generator_errors():
    with pytest.raises(FergiError, match="unknown image generator 'dalle'"):
        create_generator("dalle")
    with pytest.raises(FergiError, match="unknown option.*colour"):
        create_generator("placeholder", colour="red")
    with pytest.raises(FergiError, match="option 'path'"):
        create_generator("folder")
    with pytest.raises(FergiError, match="prompt is empty"):
        create_generator("placeholder").generate("  ", 5, seed=1)
    with pytest.raises(FergiError, match="positive integer"):
        create_generator("placeholder").generate("x", 0, seed=1)
    with pytest.raises(FergiError, match="seed must be an integer"):
        create_generator("placeholder").generate("x", 1, seed=-1)
    with pytest.raises(FergiError, match="seed must be an integer"):
        create_generator("placeholder").generate("x", 1, seed="7")
    assert available_generators() == ["diffusers", "folder", "placeholder"]


def test_is_black_image():
    assert is_black_image(Image.new("RGB", (8, 8)))
    assert not is_black_image(Image.new("RGB", (8, 8), (0, 0, 1)))
    assert is_black_image(np.full((4, 4, 3), 2, np.uint8), threshold=2)


# --------------------------------------------------------------------------- folder


def _save(path, colour, size=(32, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folder_sorted_and_black_flagged(tmp_path):
    for name, colour in [("c.png", (0, 0, 0)), ("a.png", (255, 0, 0)), ("b.jpg", (0, 255, 0))]:
        _save(tmp_path / name, colour)
    (tmp_path / "notes.txt").write_text("not an image")
    gen = create_generator("folder", path=tmp_path)
    images = gen.generate("anything", 3, seed=5)
    assert [g.meta["source_file"] for g in images] == ["a.png", "b.jpg", "c.png"]
    assert [g.invalid for g in images] == [False, False, True]
    assert np.asarray(images[0].image)[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(FergiError, match=r"3 image\(s\) found, 5 needed"):
        gen.generate("anything", 5)


def test_folder_per_prompt_subfolder(tmp_path):
    sub = tmp_path / folder_name("A cat, sleeping!")
    assert sub.name == "a-cat-sleeping"
    for i in range(5):
        _save(sub / f"{i:02d}.png", (10 * i + 5, 0, 0))
    _save(tmp_path / "top.png", (0, 0, 255))
    images = create_generator("folder", path=tmp_path).generate("A cat, sleeping!", 5)
    assert [np.asarray(g.image)[0, 0, 0] for g in images] == [5, 15, 25, 35, 45]
    # another prompt falls back to the top-level folder ("auto") or fails (per_prompt=True)
    assert (
        create_generator("folder", path=tmp_path).generate("dog", 1)[0].meta["source_file"]
        == "top.png"
    )
    with pytest.raises(FergiError, match="no image folder for prompt 'dog'"):
        create_generator("folder", path=tmp_path, per_prompt=True).generate("dog", 1)


def test_folder_errors(tmp_path):
    with pytest.raises(FergiError, match="image folder does not exist"):
        create_generator("folder", path=tmp_path / "missing")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(FergiError, match=r"broken.png: not a readable image"):
        create_generator("folder", path=tmp_path).generate("x", 1)


# --------------------------------------------------------------------------- diffusers

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def _tiny_tokenizer(tmp_path):
    """A CLIP BPE tokenizer from a tiny vocabulary and merges written here."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges = ["#version: 0.2", "c a", "ca t</w>", "r e", "re d</w>"]
    for token in ("ca", "cat</w>", "re", "red</w>"):
        vocab[token] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("\n".join(merges) + "\n")
    # positional: (vocab, merges) in transformers 5, (vocab_file, merges_file) in 4
    tokenizer = transformers.CLIPTokenizer(
        str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=77
    )
    assert tokenizer("a red cat").input_ids[1:4] == [
        vocab["a</w>"],
        vocab["red</w>"],
        vocab["cat</w>"],
    ]
    return tokenizer, len(vocab)


def _tiny_pipeline(tmp_path, **extra):
    """A randomly initialised Stable Diffusion pipeline, small enough for a CPU test."""
    torch.manual_seed(0)
    tokenizer, vocab_size = _tiny_tokenizer(tmp_path)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=vocab_size,
            projection_dim=16,
        )
    )
    scheduler = diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1)
    return diffusers.StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **extra,
    )


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    pipeline = _tiny_pipeline(root)
    pipeline.save_pretrained(root / "model")
    return root / "model"


def test_diffusers_loads_local_model_seeded_and_recorded(tiny_model_dir):
    gen = create_generator(
        "diffusers", model=tiny_model_dir, device="cpu", steps=2, local_files_only=True
    )
    images = gen.generate("a red cat", 2, seed=3)
    assert [g.seed for g in images] == [3, 4]
    assert images[0].image.size == (32, 32) and images[0].image.mode == "RGB"
    assert not any(g.invalid for g in images)
    meta = images[0].meta
    assert meta["generator"] == "diffusers" and meta["model"] == str(tiny_model_dir)
    assert meta["steps"] == 2 and meta["device"] == "cpu" and meta["dtype"] == "float32"
    json.dumps(meta)  # provenance is stored as JSON by the study
    # same seed -> same image; image 2 (seed 4) is a different image
    again = gen.generate("a red cat", 1, seed=3)[0]
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(images[0].image))
    assert not np.array_equal(np.asarray(images[0].image), np.asarray(images[1].image))
    # and equals what the pipeline itself makes with that seed
    reference = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model_dir)(
        "a red cat", num_inference_steps=2, generator=torch.Generator().manual_seed(4)
    ).images[0]
    np.testing.assert_array_equal(np.asarray(reference), np.asarray(images[1].image))


def test_diffusers_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(FergiError, match="model folder does not exist"):
        create_generator("diffusers", model=tmp_path / "nope", device="cpu").load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FergiError, match="cannot load the Stable Diffusion model"):
        create_generator("diffusers", model=tmp_path / "empty", device="cpu").load()
    # a Hub id that is not cached, offline
    with pytest.raises(FergiError, match=r"fergi-test/not-cached: cannot load.*offline\?"):
        create_generator(
            "diffusers", model="fergi-test/not-cached", device="cpu", local_files_only=True
        ).generate("a cat", 1, seed=0)
    with pytest.raises(FergiError, match="steps must be a positive integer"):
        create_generator("diffusers", steps=0)


class _BlackingSafetyChecker(torch.nn.Module):
    """Flags the first ``n_black`` images it sees and blacks them out, like SD's checker."""

    def __init__(self, n_black):
        super().__init__()
        # the pipeline finds its device from its modules' parameters
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.n_black = n_black
        self.calls = 0

    @property
    def device(self):
        return self.anchor.device

    @property
    def dtype(self):
        return self.anchor.dtype

    def forward(self, clip_input, images):
        flags = []
        for i in range(len(images)):
            self.calls += 1
            flagged = self.calls <= self.n_black
            if flagged:
                images[i] = (
                    np.zeros(images[i].shape) if isinstance(images, np.ndarray) else 0 * images[i]
                )
            flags.append(flagged)
        return images, flags


class _FeatureExtractor:
    """Stands in for CLIPImageProcessor: the fake checker ignores its input."""

    def __call__(self, images, return_tensors="pt"):
        return transformers.BatchFeature({"pixel_values": torch.zeros(len(images), 3, 8, 8)})


def _with_checker(tmp_path, n_black):
    pipeline = _tiny_pipeline(tmp_path)
    pipeline.safety_checker = _BlackingSafetyChecker(n_black)
    pipeline.feature_extractor = _FeatureExtractor()
    return pipeline


def test_diffusers_black_safety_output_is_invalid(tmp_path):
    pipeline = _with_checker(tmp_path, n_black=1)
    gen = create_generator("diffusers", pipeline=pipeline, device="cpu", steps=2)
    images = gen.generate("a red cat", 3, seed=10)
    assert [g.invalid for g in images] == [True, False, False]
    assert is_black_image(images[0].image)
    assert images[0].meta["nsfw_flag"] is True and images[0].meta["rejected_seeds"] == []
    assert images[0].seed == 10


def test_diffusers_regenerates_invalid_with_new_seeds(tmp_path):
    pipeline = _with_checker(tmp_path, n_black=2)
    gen = create_generator(
        "diffusers", pipeline=pipeline, device="cpu", steps=2, regenerate_invalid=3
    )
    images = gen.generate("a red cat", 2, seed=10)
    # image 1: seeds 10 and 12 blacked out, 13 kept; image 2 keeps its own seed 11
    assert [g.invalid for g in images] == [False, False]
    assert images[0].seed == 13 and images[0].meta["rejected_seeds"] == [10, 12]
    assert images[1].seed == 11 and images[1].meta["rejected_seeds"] == []
    assert not is_black_image(images[0].image)

    # when retries run out, the image stays flagged
    gen = create_generator(
        "diffusers",
        pipeline=_with_checker(tmp_path, n_black=5),
        device="cpu",
        steps=2,
        regenerate_invalid=1,
    )
    image = gen.generate("a red cat", 1, seed=0)[0]
    assert image.invalid and image.meta["rejected_seeds"] == [0] and image.seed == 1


def test_diffusers_not_installed_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(FergiError, match=r"needs diffusers and transformers.*fergi\[generate\]"):
        create_generator("diffusers", model="CompVis/stable-diffusion-v1-4")
