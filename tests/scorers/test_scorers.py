"""fergi.scorers: the six baseline scorers on tiny random-weight models.

No weights can be downloaded, so every test builds models with the published layouts
(tiny sizes) and checks (a) the plumbing a user relies on (batching, truncation,
errors, determinism) and (b) each number against its reference formula: transformers'
own CLIP functions for PickScore (its reference implementation), and an independent
hand-written OpenAI-CLIP forward pass for CLIP score, Aesthetic and HPS v2 (whose
reference libraries, openai/CLIP and hpsv2, need torchvision, which does not load with
fergi's CPU torch).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fergi import FergiError
from fergi.scorers import create_scorer, get_scorer_spec, list_scorers
from fergi.scorers._images import CLIP_MEAN, CLIP_STD
from fergi.scorers._testing import make_scorer_weights

CLIP_FAMILY = ["clip", "aesthetic", "pickscore", "hpsv2"]
RELEASE = ["clip", "aesthetic", "blip", "imagereward", "pickscore", "hpsv2"]
ALL = [*RELEASE, "hpsv2.1"]


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    """Weight fingerprints and scores go to a temporary folder, never the user's cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("FERGI_SCORERS_DIR", str(tmp_path / "fergi-scorers"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_scorer_weights(tmp_path_factory.mktemp("scorer-weights"))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Square, landscape and portrait, smaller and larger than the 32-pixel input.
    shapes = [(32, 32), (40, 57), (61, 35), (20, 27), (64, 64)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


PROMPTS = ["a red cat", "a dog", "a red cat", "cat and dog on a red sofa", "a dog"]


def test_registry_lists_the_six_in_release_order_with_their_columns():
    from fergi.schema import SCORE_COLUMNS

    assert list_scorers() == ALL
    assert list_scorers(release=True) == RELEASE
    assert [get_scorer_spec(n).column for n in RELEASE] == list(SCORE_COLUMNS)
    # HPS v2.1 has its own column: never the release's (v2.0) one.
    assert get_scorer_spec("hpsv2.1").column == "HPS_V2.1_score"
    with pytest.raises(FergiError, match="unknown scorer"):
        create_scorer("clipp")


def test_missing_weights_say_which_file_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FergiError, match="HPS_v2.*xswu/HPSv2"):
        create_scorer("hpsv2")
    with pytest.raises(FergiError, match=r"nope\.pt: clip weights not found"):
        create_scorer("clip", weights=tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FergiError, match=r"bad\.pt: cannot read the checkpoint"):
        create_scorer("clip", weights=bad)


def test_weights_are_found_in_the_hf_cache_and_the_scorers_folder(weights, images, tmp_path, monkeypatch):
    """No path given: the Hugging Face cache layout, then $FERGI_SCORERS_DIR by file name."""
    import shutil

    snapshot = tmp_path / "hf-hub" / "models--xswu--HPSv2" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    shutil.copy(weights["hpsv2"]["weights"], snapshot / "HPS_v2_compressed.pt")
    (tmp_path / "hf-hub" / "models--xswu--HPSv2" / "refs").mkdir()
    (tmp_path / "hf-hub" / "models--xswu--HPSv2" / "refs" / "main").write_text("abc123")
    options = {k: v for k, v in weights["hpsv2"].items() if k != "weights"}
    found = create_scorer("hpsv2", **options).score(images, PROMPTS)
    np.testing.assert_array_equal(found, create_scorer("hpsv2", **weights["hpsv2"]).score(images, PROMPTS))

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/ImageReward copy either
    folder = tmp_path / "fergi-scorers"
    folder.mkdir(exist_ok=True)
    shutil.copy(weights["aesthetic"]["weights"], folder / "sac+logos+ava1-l14-linearMSE.pth")
    options = {k: v for k, v in weights["aesthetic"].items() if k != "weights"}
    np.testing.assert_array_equal(create_scorer("aesthetic", **options).score(images, PROMPTS),
                                  create_scorer("aesthetic", **weights["aesthetic"]).score(images, PROMPTS))


@pytest.mark.parametrize("name", ALL)
def test_batching_and_reruns_give_the_same_scores(name, weights, images):
    one = create_scorer(name, batch_size=1, **weights[name]).score(images, PROMPTS)
    scorer = create_scorer(name, batch_size=3, num_workers=2, **weights[name])
    batched = scorer.score(images, PROMPTS)
    assert one.shape == (5,) and np.isfinite(one).all()
    np.testing.assert_allclose(batched, one, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scorer.score(images, PROMPTS), batched)
    # Different images get different scores: the inputs really reach the model.
    assert np.unique(np.round(one, 6)).size > 1


@pytest.mark.parametrize("name", ["clip", "pickscore", "hpsv2"])
def test_long_prompts_are_truncated_to_the_context(name, weights, images):
    scorer = create_scorer(name, **weights[name])
    # 16-token context: BOS + 14 tokens + EOS. Both prompts share their first 14 tokens.
    base = " ".join(["cat"] * 14)
    long_a, long_b = base + " dog" * 50, base + " red" * 80
    a, b = scorer.score(images[:2], [long_a, long_b])
    c = scorer.score(images[:2], [base, base])
    np.testing.assert_allclose([a, b], c, rtol=1e-6)
    assert scorer.score(images[:1], "a dog")[0] != pytest.approx(c[0])


def test_html_entities_are_unescaped_as_the_openai_tokenizer_does(weights, images):
    """CLIP and HPS v2 tokenise like OpenAI/OpenCLIP (``&amp;`` is ``&``); PickScore like
    transformers, which keeps the entity."""
    for name in ("clip", "hpsv2"):
        scorer = create_scorer(name, **weights[name])
        np.testing.assert_array_equal(scorer.score(images[:2], "cat &amp;amp; dog"),
                                      scorer.score(images[:2], "cat & dog"))
    pick = create_scorer("pickscore", **weights["pickscore"])
    assert not np.allclose(pick.score(images[:2], "cat &amp; dog"), pick.score(images[:2], "cat & dog"))


@pytest.mark.parametrize("name", ALL)
def test_a_corrupt_image_is_one_error_naming_it(name, weights, images, tmp_path):
    good = tmp_path / "good.png"
    images[0].save(good)
    bad = tmp_path / "session_1" / "image_3.png"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[:40])
    scorer = create_scorer(name, **weights[name])
    with pytest.raises(FergiError) as err:
        scorer.score([good, bad], ["a cat", "a cat"])
    message = str(err.value)
    assert str(bad) in message and "\n" not in message
    with pytest.raises(FergiError, match="missing.png: image not found"):
        scorer.score([tmp_path / "missing.png"], ["a cat"])


def test_prompt_count_must_match(weights, images):
    with pytest.raises(FergiError, match="5 images but 2 prompts"):
        create_scorer("clip", **weights["clip"]).score(images, ["a", "b"])


# -- reference parity -----------------------------------------------------------------

def _hps_reference_pixels(img: Image.Image, size: int, antialias: bool = True) -> torch.Tensor:
    """hpsv2's val transform written out: ToTensor, ResizeMaxSize on the float tensor
    (torchvision's tensor resize is interpolate(bicubic, align_corners=False)), pad, Normalize."""
    x = torch.tensor(np.asarray(img.convert("RGB")), dtype=torch.float32).permute(2, 0, 1) / 255
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    nh, nw = round(h * scale), round(w * scale)
    x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=antialias)[0]
    out = torch.zeros(3, size, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[:, top:top + nh, left:left + nw] = x
    return (out - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def _reference_pixels(img: Image.Image, size: int, mode: str) -> torch.Tensor:
    """torchvision's Resize/CenterCrop (ImageReward, CLIP), HF's processor crop or HPS v2's
    tensor ResizeMaxSize, written out from their published definitions."""
    if mode == "pad":
        return _hps_reference_pixels(img, size)
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
    img = img.crop((left, top, left + size, top + size))
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def _block(x, sd, p, heads, act, mask=None):
    """One OpenAI CLIP ResidualAttentionBlock (pre-LN attention + MLP), from its state dict."""
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"])

    y = ln(x, "ln_1")
    b, n, d = y.shape
    q, k, v = (y @ sd[f"{p}attn.in_proj_weight"].T + sd[f"{p}attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        att = att + mask
    y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    x = x + y @ sd[f"{p}attn.out_proj.weight"].T + sd[f"{p}attn.out_proj.bias"]
    y = ln(x, "ln_2") @ sd[f"{p}mlp.c_fc.weight"].T + sd[f"{p}mlp.c_fc.bias"]
    y = y * torch.sigmoid(1.702 * y) if act == "quick_gelu" else F.gelu(y)
    return x + y @ sd[f"{p}mlp.c_proj.weight"].T + sd[f"{p}mlp.c_proj.bias"]


def _openai_clip(sd, pixels, ids, heads, act):
    """CLIP's encode_image / encode_text (openai/CLIP model.py), written out."""
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"])

    conv = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
    x = ln(x + sd["visual.positional_embedding"], "visual.ln_pre")
    n_layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    for i in range(n_layers):
        x = _block(x, sd, f"visual.transformer.resblocks.{i}.", heads, act)
    image = ln(x[:, 0], "visual.ln_post") @ sd["visual.proj"]

    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    n = ids.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(n_layers):
        t = _block(t, sd, f"transformer.resblocks.{i}.", heads, act, causal)
    t = ln(t, "ln_final")
    text = t[torch.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def _tokens(weights, prompts, n=16):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(weights["clip"]["tokenizer"]))
    return tok(prompts, padding="max_length", truncation=True, max_length=n, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("name,file,mode,act", [
    ("clip", "ViT-L-14.pt", "crop", "quick_gelu"),
    ("hpsv2", "HPS_v2_compressed.pt", "pad", "gelu"),
])
def test_cosine_scores_match_the_openai_clip_formula(name, file, mode, act, weights, images):
    sd = torch.load(weights[name]["weights"], weights_only=True)
    sd = sd.get("state_dict", sd)
    pixels = torch.stack([_reference_pixels(im, 32, mode) for im in images])
    with torch.no_grad():
        img, txt = _openai_clip(sd, pixels, _tokens(weights, PROMPTS), heads=2, act=act)
    expected = (img * txt).sum(-1).numpy()
    got = create_scorer(name, batch_size=2, **weights[name]).score(images, PROMPTS)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_aesthetic_matches_the_mlp_on_normalised_clip_embeddings(weights, images):
    sd = torch.load(weights["clip"]["weights"], weights_only=True)
    mlp = torch.load(weights["aesthetic"]["weights"], weights_only=True)
    pixels = torch.stack([_reference_pixels(im, 32, "crop") for im in images])
    with torch.no_grad():
        img, _ = _openai_clip(sd, pixels, _tokens(weights, PROMPTS), heads=2, act="quick_gelu")
        x = img
        for i in (0, 2, 4, 6, 7):  # Linear layers; dropouts between them are inactive
            x = x @ mlp[f"layers.{i}.weight"].T + mlp[f"layers.{i}.bias"]
    got = create_scorer("aesthetic", **weights["aesthetic"]).score(images, PROMPTS)
    np.testing.assert_allclose(got, x[:, 0].numpy(), atol=1e-4, rtol=1e-5)
    # The prompt is not used.
    np.testing.assert_array_equal(
        create_scorer("aesthetic", **weights["aesthetic"]).score(images, "x"), got)


def test_pickscore_matches_transformers_reference_inference(weights, images):
    """PickScore's published inference: CLIPProcessor + get_*_features + logit scale."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    folder = str(weights["pickscore"]["weights"])
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                      image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    expected = []
    with torch.no_grad():
        for image, prompt in zip(images, PROMPTS, strict=True):
            pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            text = tokenizer(prompt, padding=True, truncation=True, max_length=16, return_tensors="pt")
            i = model.get_image_features(pixel_values=pixels)
            t = model.get_text_features(**text)
            i = getattr(i, "pooler_output", i)
            t = getattr(t, "pooler_output", t)
            i, t = i / i.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
            expected.append((model.logit_scale.exp() * (t @ i.T))[0, 0].item())
    got = create_scorer("pickscore", batch_size=4, **weights["pickscore"]).score(images, PROMPTS)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["blip", "imagereward"])
def test_blip_prompts_are_truncated_to_35_tokens(name, weights, images):
    scorer = create_scorer(name, **weights[name])
    base = " ".join(["cat"] * 33)  # [CLS] + 33 words + [SEP] = 35
    a = scorer.score(images[:2], [base + " dog" * 60, base + " red sofa" * 40])
    np.testing.assert_allclose(a, scorer.score(images[:2], [base, base]), rtol=1e-6)


def _bert_layer(x, sd, p, mask, heads, image=None):
    """One layer of BLIP's med.py BERT (post-LayerNorm), optionally cross-attending to image."""
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"], eps=1e-12)

    def lin(t, name):
        return t @ sd[f"{p}{name}.weight"].T + sd[f"{p}{name}.bias"]

    def attention(q_in, kv_in, kind, add_mask):
        q, k, v = lin(q_in, f"{kind}.self.query"), lin(kv_in, f"{kind}.self.key"), lin(kv_in, f"{kind}.self.value")
        b, n, d = q.shape
        q, k, v = (t.reshape(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        att = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        if add_mask is not None:
            att = att + add_mask
        ctx = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        return ln(lin(ctx, f"{kind}.output.dense") + q_in, f"{kind}.output.LayerNorm")

    x = attention(x, x, "attention", mask)
    if image is not None:
        x = attention(x, image, "crossattention", None)
    return ln(lin(F.gelu(lin(x, "intermediate.dense")), "output.dense") + x, "output.LayerNorm")


def _blip_reference(sd, pixels, ids, attn_mask, multimodal):
    """salesforce/BLIP's ViT (timm blocks) and med.py BERT, written out from the state dict."""
    def ln(t, name, eps=1e-6):
        return F.layer_norm(t, t.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=eps)

    conv = sd["visual_encoder.patch_embed.proj.weight"]
    x = F.conv2d(pixels, conv, sd["visual_encoder.patch_embed.proj.bias"], stride=conv.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual_encoder.cls_token"].expand(len(x), 1, -1), x], 1) + sd["visual_encoder.pos_embed"]
    for i in range(2):
        p = f"visual_encoder.blocks.{i}."
        y = ln(x, p + "norm1")
        b, n, d = y.shape
        qkv = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, n, 3, 1, d).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-1, -2) * d ** -0.5).softmax(-1)
        y = (att @ qkv[2]).transpose(1, 2).reshape(b, n, d)
        x = x + y @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        y = F.gelu(ln(x, p + "norm2") @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    image = ln(x, "visual_encoder.norm")

    t = sd["text_encoder.embeddings.word_embeddings.weight"][ids]
    t = t + sd["text_encoder.embeddings.position_embeddings.weight"][: ids.shape[1]]
    t = ln(t, "text_encoder.embeddings.LayerNorm", eps=1e-12)
    mask = (1.0 - attn_mask[:, None, None, :].float()) * -10000.0  # med.py's extended mask
    for i in range(2):
        t = _bert_layer(t, sd, f"text_encoder.encoder.layer.{i}.", mask, 1, image if multimodal else None)
    return image, t[:, 0]


def test_blip_and_imagereward_match_the_published_formulas(weights, images):
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(weights["blip"]["weights"].parent))
    text = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    pixels = torch.stack([_reference_pixels(im, 32, "crop") for im in images])

    sd = torch.load(weights["blip"]["weights"], weights_only=True)["model"]
    with torch.no_grad():
        image, cls = _blip_reference(sd, pixels, text["input_ids"], text["attention_mask"], False)
        img = F.normalize(image[:, 0] @ sd["vision_proj.weight"].T + sd["vision_proj.bias"], dim=-1)
        txt = F.normalize(cls @ sd["text_proj.weight"].T + sd["text_proj.bias"], dim=-1)
    got = create_scorer("blip", batch_size=2, **weights["blip"]).score(images, PROMPTS)
    np.testing.assert_allclose(got, (img * txt).sum(-1).numpy(), atol=1e-4)

    full = torch.load(weights["imagereward"]["weights"], weights_only=True)
    sd = {k.removeprefix("blip."): v for k, v in full.items()}
    with torch.no_grad():
        _, cls = _blip_reference(sd, pixels, text["input_ids"], text["attention_mask"], True)
        x = cls
        for i in (0, 2, 4, 6, 7):
            x = x @ sd[f"mlp.layers.{i}.weight"].T + sd[f"mlp.layers.{i}.bias"]
    expected = (x[:, 0] - 0.16717362830052426) / 1.0333394966054072
    got = create_scorer("imagereward", batch_size=3, **weights["imagereward"]).score(images, PROMPTS)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-5)


def test_openai_torchscript_checkpoint_gives_the_same_scores(weights, images, tmp_path):
    """OpenAI's ViT-L-14.pt is a TorchScript archive with metadata entries; it loads as is."""
    from fergi.scorers._testing import save_torchscript

    sd = torch.load(weights["clip"]["weights"], weights_only=True)
    sd["input_resolution"], sd["context_length"], sd["vocab_size"] = (torch.tensor(v) for v in (32, 16, 520))
    save_torchscript(sd, tmp_path / "ViT-L-14.pt")
    options = {**weights["clip"], "weights": tmp_path / "ViT-L-14.pt"}
    np.testing.assert_allclose(create_scorer("clip", **options).score(images, PROMPTS),
                               create_scorer("clip", **weights["clip"]).score(images, PROMPTS), rtol=1e-6)


# -- faithful to the references: HPS version, text cleaning, precision, HPS preprocessing --------

def _hf_cache_file(hub: Path, repo: str, src: Path, name: str) -> None:
    """Put ``src`` in a Hugging Face cache layout as ``repo``'s file ``name``."""
    import shutil

    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "snapshots" / "abc123").mkdir(parents=True, exist_ok=True)
    shutil.copy(src, root / "snapshots" / "abc123" / name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text("abc123")


def test_hpsv2_is_v2_0_and_never_loads_a_v2_1_file(weights, images, tmp_path, monkeypatch):
    """``hpsv2`` is HPS v2.0 (the paper's, the release's, hpsv2's default): a cached v2.1
    file is never taken for it; v2.1 is the scorer ``hpsv2.1`` with its own column."""
    import shutil

    import fergi.scorers._clip as clip_module
    from fergi.batch import score_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    v20, v21 = weights["hpsv2"]["weights"], weights["hpsv2.1"]["weights"]
    _hf_cache_file(tmp_path / "hf-hub", "xswu/HPSv2", v21, "HPS_v2.1_compressed.pt")
    for folder in (tmp_path / "fergi-scorers", tmp_path / ".cache" / "hpsv2"):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(v21, folder / "HPS_v2.1_compressed.pt")
    read = []
    real_read = clip_module.read_state_dict
    monkeypatch.setattr(clip_module, "read_state_dict", lambda path: read.append(Path(path).name) or real_read(path))
    options = {k: v for k, v in weights["hpsv2"].items() if k != "weights"}

    with pytest.raises(FergiError, match="hpsv2: no weights found.*HPS_v2_compressed.pt"):
        create_scorer("hpsv2", **options)
    with pytest.raises(FergiError, match=r"HPS_v2\.1_compressed\.pt: this is the hpsv2\.1 checkpoint.*HPS_V2\.1_score"):
        create_scorer("hpsv2", **{**options, "weights": v21})
    with pytest.raises(FergiError, match=r"HPS_v2_compressed\.pt: this is the hpsv2 checkpoint"):
        create_scorer("hpsv2.1", **{**options, "weights": v20})
    assert read == []

    # With v2.0 beside it (here in fergi's folder, v2.1 in the HF cache), hpsv2 reads v2.0 only.
    shutil.copy(v20, tmp_path / "fergi-scorers" / "HPS_v2_compressed.pt")
    found = create_scorer("hpsv2", **options)
    assert read == ["HPS_v2_compressed.pt"]
    np.testing.assert_array_equal(found.score(images, PROMPTS),
                                  create_scorer("hpsv2", **weights["hpsv2"]).score(images, PROMPTS))
    read.clear()
    create_scorer("hpsv2.1", **options)
    assert read == ["HPS_v2.1_compressed.pt"]

    # score_folder (what `fergi score` runs) writes each version in its own column.
    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(images):
        im.save(tmp_path / "imgs" / f"{i}.png")
    table = tmp_path / "prompts.csv"
    table.write_text("image,prompt\n" + "".join(f"imgs/{i}.png,{p}\n" for i, p in enumerate(PROMPTS)))
    score_folder(tmp_path, ["hpsv2", "hpsv2.1"], prompts=table, weights={"hpsv2": options, "hpsv2.1": options},
                 cache=False)
    import pandas as pd

    out = pd.read_csv(tmp_path / "scores.csv")
    np.testing.assert_allclose(out["HPS_V2_score"], create_scorer("hpsv2", **weights["hpsv2"]).score(images, PROMPTS),
                               rtol=1e-12)
    np.testing.assert_allclose(out["HPS_V2.1_score"],
                               create_scorer("hpsv2.1", **weights["hpsv2.1"]).score(images, PROMPTS), rtol=1e-12)
    assert not np.allclose(out["HPS_V2_score"], out["HPS_V2.1_score"])


#: Prompts with curly quotes, ligatures, full-width letters, emoji, mojibake, HTML and
#: whitespace, and what OpenAI CLIP's / OpenCLIP's tokenizer makes of them.
NON_ASCII = [
    ("“A red cat” on the sofa", '"a red cat" on the sofa'),
    ("the dog‘s toy’", "the dog's toy'"),
    ("ﬁsh and ﬂowers", "fish and flowers"),
    ("ＦＵＬＬ ｗｉｄｔｈ\u3000ｃａｔ", "full width cat"),
    ("a cat 🐱 and a dog 🐶", "a cat 🐱 and a dog 🐶"),
    ("cafÃ© au lait", "café au lait"),
    ("cat &amp;amp; dog\t\n  on   a sofa ", "cat & dog on a sofa"),
]


def test_prompts_are_cleaned_as_the_openclip_tokenizer_does(weights, images):
    """CLIP score and HPS v2 tokenise ftfy's output (OpenAI CLIP / OpenCLIP ``basic_clean``,
    ``whitespace_clean``, lower case); PickScore tokenises as transformers does, unclean."""
    import html

    import ftfy
    from transformers import CLIPTokenizer

    raw = [r for r, _ in NON_ASCII]
    cleaned = [c for _, c in NON_ASCII]
    # The expectations are ftfy's own output, then OpenCLIP's HTML, whitespace and case steps.
    assert [" ".join(html.unescape(html.unescape(ftfy.fix_text(r))).split()).lower() for r in raw] == cleaned
    tok = CLIPTokenizer.from_pretrained(str(weights["clip"]["tokenizer"]))

    def ids(texts):
        return tok(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")["input_ids"]

    # Uncleaned, most of these tokenise differently: the test can fail.
    assert (ids(raw) != ids(cleaned)).any(dim=1).sum() >= 5
    for name in ("clip", "hpsv2", "hpsv2.1"):
        scorer = create_scorer(name, **weights[name])
        assert torch.equal(scorer.tokenize(raw)[0], ids(cleaned)), name
        np.testing.assert_array_equal(scorer.score(images[:1] * len(raw), raw),
                                      scorer.score(images[:1] * len(raw), cleaned))
    pick = create_scorer("pickscore", **weights["pickscore"])
    assert torch.equal(pick.tokenize(raw)[0], ids(raw))


def test_fp32_by_default_fp16_on_request_with_its_own_cache_key(weights, images):
    fp32 = create_scorer("pickscore", **weights["pickscore"])
    assert fp32.precision == "fp32" and next(fp32.model.parameters()).dtype == torch.float32
    fp16 = create_scorer("pickscore", precision="fp16", **weights["pickscore"])
    assert next(fp16.model.parameters()).dtype == torch.float16
    a, b = fp32.score(images, PROMPTS), fp16.score(images, PROMPTS)
    assert b.dtype == np.float64 and not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, atol=0.5)  # PickScore is about 100 x cosine
    # The same weights, another cache key.
    assert fp16.weights_fingerprint == fp32.weights_fingerprint
    assert fp16.fingerprint != fp32.fingerprint
    with pytest.raises(FergiError, match="--precision 'bf16': expected fp32 or fp16"):
        create_scorer("clip", precision="bf16", **weights["clip"])


def test_hps_preprocessing_resizes_the_float_tensor_as_hpsv2(weights):
    """hpsv2's order: ToTensor, bicubic resize of the float tensor, zero pad, normalise."""
    from fergi.scorers._images import to_normalized_array

    rng = np.random.default_rng(5)
    scorer = create_scorer("hpsv2", **weights["hpsv2"])
    old = create_scorer("hpsv2", antialias=False, **weights["hpsv2"])
    assert old.fingerprint != scorer.fingerprint  # other numbers, another cache key
    for h, w in [(45, 60), (61, 35), (20, 27)]:  # down and up, landscape and portrait
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        got = scorer.preprocess(img)
        assert got.shape == (3, 32, 32)
        np.testing.assert_allclose(got, _hps_reference_pixels(img, 32).numpy(), atol=1e-6)
        np.testing.assert_allclose(old.preprocess(img), _hps_reference_pixels(img, 32, antialias=False).numpy(),
                                   atol=1e-6)
        # Not the PIL resize of the uint8 image (fergi's earlier path): its rounding and
        # clamping give other values.
        pil = Image.new("RGB", (32, 32))
        nh, nw = round(h * 32 / max(h, w)), round(w * 32 / max(h, w))
        pil.paste(img.resize((nw, nh), Image.BICUBIC), ((32 - nw) // 2, (32 - nh) // 2))
        assert np.abs(got - to_normalized_array(pil)).max() > 0.01
    # A float tensor resize is not clamped: a sharp edge overshoots [0, 1] before normalising.
    edge = np.zeros((20, 24, 3), np.uint8)
    edge[:, 12:] = 255
    x = scorer.preprocess(Image.fromarray(edge)) * np.asarray(CLIP_STD)[:, None, None] + np.asarray(CLIP_MEAN)[:, None, None]
    assert x.max() > 1.0 + 1e-3 and x.min() < -1e-3


def test_crop_preprocessing_converts_to_rgb_after_the_resize_as_torchvision(weights):
    """openai/CLIP and ImageReward resize and crop the image in its own mode, then convert:
    a palette image is resized with nearest neighbours (PIL's rule for P), an RGBA one
    with premultiplied alpha."""
    from fergi.scorers._images import to_normalized_array

    rng = np.random.default_rng(6)
    rgb = Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (45, 60, 4), dtype=np.uint8), "RGBA")
    scorer = create_scorer("clip", **weights["clip"])
    for img in (rgb.quantize(16), rgba):
        resized = img.resize((42, 32), Image.BICUBIC)   # int(32 * 60 / 45) = 42
        expected = to_normalized_array(resized.crop((5, 0, 37, 32)).convert("RGB"))  # round(10 / 2) = 5
        np.testing.assert_array_equal(scorer.preprocess(img), expected)
        converted_first = to_normalized_array(img.convert("RGB").resize((42, 32), Image.BICUBIC).crop((5, 0, 37, 32)))
        assert not np.array_equal(expected, converted_first)
