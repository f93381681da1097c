"""Check fergi's scorers against the reference libraries' own model code, where pip cannot install them.

Usage:
    pip download --no-deps -d refs open_clip_torch==3.3.0 image-reward==1.5 ftfy wcwidth
    for f in refs/*.whl; do python -m zipfile -e "$f" refs/site/; done
    python tools/check_scorers_against_references.py refs/site

``open_clip_torch``, ``hpsv2`` and ``image-reward`` need torchvision, whose PyPI wheels
do not load with the CPU torch build fergi pins (and ``image-reward`` needs timm 0.6,
fairscale and helpers that transformers 5 removed), so the tests compare fergi with the
published formulas written out. This script goes one step further on a machine with the
unpacked wheels: it imports the references' model code itself (OpenCLIP's ``CLIP`` and
``SimpleTokenizer``; ImageReward's BLIP ``med.py`` and ``vit.py``), with stubs for the
pieces that cannot load (torchvision, which the model code does not use; timm's
``PatchEmbed``, written out as timm 0.6 defines it; fairscale's checkpoint wrapper;
``invert_attention_mask`` of transformers 4), loads the same tiny random-weight
checkpoints as fergi and prints the largest difference of each score.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers  # noqa: F401  (imported before the torchvision stub, so it sees none)
from PIL import Image
from torch import nn
from transformers import BertTokenizer, CLIPTokenizer

from fergi.scorers import create_scorer
from fergi.scorers._clip import openai_clean
from fergi.scorers._images import load_image, preprocess
from fergi.scorers._testing import TINY_BLIP, TINY_CLIP, make_scorer_weights


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _stub_torchvision():
    class _Any:
        def __init__(self, *args, **kwargs):
            pass

    tv = _module("torchvision")
    tv.__path__ = []
    names = ["Normalize", "Compose", "RandomResizedCrop", "InterpolationMode", "ToTensor", "Resize",
             "CenterCrop", "ColorJitter", "Grayscale", "RandomHorizontalFlip", "RandomGrayscale"]
    tv.transforms = _module("torchvision.transforms", **{n: type(n, (_Any,), {"BICUBIC": 3}) for n in names})
    tv.transforms.functional = _module("torchvision.transforms.functional")
    tv.transforms.v2 = _module("torchvision.transforms.v2")
    tv.ops = _module("torchvision.ops")
    tv.ops.misc = _module("torchvision.ops.misc", FrozenBatchNorm2d=type("FrozenBatchNorm2d", (nn.Module,), {}))


def _images():
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(32, 32), (45, 60), (70, 33)]]


def check_openclip(site: Path, tmp: Path) -> None:
    _stub_torchvision()
    sys.path.insert(0, str(site))
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    weights = make_scorer_weights(tmp / "clip")
    images, prompts = _images(), ["a red cat", "cat and dog on a red sofa", "a dog"]
    vocab = json.loads((weights["clip"]["tokenizer"] / "vocab.json").read_text())
    tok = CLIPTokenizer.from_pretrained(str(weights["clip"]["tokenizer"]))
    ids = tok(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    vc, tc = TINY_CLIP["vision_config"], TINY_CLIP["text_config"]
    for name, mode, quick_gelu in (("clip", "crop", True), ("hpsv2", "pad", False)):
        model = CLIP(embed_dim=TINY_CLIP["projection_dim"], quick_gelu=quick_gelu,
                     vision_cfg={"image_size": vc["image_size"], "layers": vc["num_hidden_layers"],
                                 "width": vc["hidden_size"], "patch_size": vc["patch_size"],
                                 "head_width": vc["hidden_size"] // vc["num_attention_heads"],
                                 "mlp_ratio": vc["intermediate_size"] / vc["hidden_size"]},
                     text_cfg={"context_length": tc["max_position_embeddings"], "vocab_size": len(vocab),
                               "width": tc["hidden_size"], "heads": tc["num_attention_heads"],
                               "layers": tc["num_hidden_layers"],
                               "mlp_ratio": tc["intermediate_size"] / tc["hidden_size"]}).eval()
        state = torch.load(weights[name]["weights"], weights_only=True)
        model.load_state_dict(state.get("state_dict", state), strict=False)
        pixels = torch.stack([torch.from_numpy(preprocess(load_image(i), 32, mode)) for i in images])
        with torch.no_grad():
            out = model(pixels, ids)
            image, text = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
        ref = (image * text).sum(-1).numpy()
        got = create_scorer(name, **weights[name]).score(images, prompts)
        print(f"{name:<12} vs open_clip CLIP: max |difference| {np.abs(ref - got).max():.2e}")

    # Tokenisation: OpenAI's BPE (SimpleTokenizer) vs transformers' CLIPTokenizer on the same files.
    st = SimpleTokenizer()
    folder = tmp / "bpe"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(st.encoder))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    hf = CLIPTokenizer.from_pretrained(str(folder))
    texts = ["A photo of a cat", "a beautiful sunset over the mountains, trending on artstation, 4k",
             "Portrait of an old man; oil painting (Rembrandt style) -- highly detailed!!!",
             "café au lait & croissants", "a dog's toy, it's red", "  multiple   spaces\tand tabs ",
             "emoji 🐱 cat", "numbers 1234 and 3.14", "&amp; html entity", "Mixed CASE Words"]
    same = 0
    for text in texts:
        a = st(text, context_length=77)[0].tolist()
        # Compare the words: the dumped vocabulary re-adds the special tokens at other ids.
        same += a[1: a.index(49407)] == hf(openai_clean(text))["input_ids"][1:-1]
    print(f"tokenizer    vs open_clip SimpleTokenizer: {same} of {len(texts)} prompts give the same ids")


class _PatchEmbed(nn.Module):
    """timm 0.6's ``PatchEmbed`` (flatten, no norm), written out."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, **_):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check_imagereward(site: Path, tmp: Path) -> None:
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    mu.apply_chunking_to_forward = pu.apply_chunking_to_forward
    mu.prune_linear_layer = pu.prune_linear_layer
    mu.find_pruneable_heads_and_indices = lambda *a, **k: None
    for name in ("timm", "timm.models", "fairscale", "fairscale.nn", "fairscale.nn.checkpoint"):
        _module(name)
    _module("timm.models.vision_transformer", _cfg=lambda **k: k, PatchEmbed=_PatchEmbed)
    _module("timm.models.registry", register_model=lambda f: f)
    _module("timm.models.layers", trunc_normal_=nn.init.trunc_normal_, DropPath=lambda p=0.0: nn.Identity())
    _module("timm.models.helpers", named_apply=lambda fn, module, **k: module, adapt_input_conv=None)
    _module("fairscale.nn.checkpoint.checkpoint_activations", checkpoint_wrapper=lambda m, **k: m)
    blip_dir = site / "ImageReward" / "models" / "BLIP"
    med = _load("imagereward_med", blip_dir / "med.py")
    vit = _load("imagereward_vit", blip_dir / "vit.py")

    def invert(self, mask):  # transformers 4's ModuleUtilsMixin.invert_attention_mask
        ext = (mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]).float()
        return (1.0 - ext) * torch.finfo(torch.float32).min

    med.BertPreTrainedModel.init_weights = lambda self: None  # the checkpoint sets every weight
    med.BertModel.invert_attention_mask = invert
    if not hasattr(med.BertModel, "get_head_mask"):
        med.BertModel.get_head_mask = lambda self, head_mask, n: [None] * n

    cfg, v, t = TINY_BLIP, TINY_BLIP["vision"], TINY_BLIP["text"]

    def reference():
        parts = nn.Module()
        parts.visual_encoder = vit.VisionTransformer(
            img_size=v["image_size"], patch_size=v["patch_size"], embed_dim=v["hidden_size"],
            depth=v["num_hidden_layers"], num_heads=v["num_attention_heads"],
            mlp_ratio=v["intermediate_size"] / v["hidden_size"])
        bert = med.BertConfig(vocab_size=t["vocab_size"], hidden_size=t["hidden_size"],
                              num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
                              intermediate_size=t["intermediate_size"], layer_norm_eps=1e-12,
                              max_position_embeddings=t["max_position_embeddings"], add_cross_attention=True)
        bert.encoder_width = v["hidden_size"]
        parts.text_encoder = med.BertModel(config=bert, add_pooling_layer=False)
        parts.vision_proj = nn.Linear(v["hidden_size"], cfg["embed_dim"])
        parts.text_proj = nn.Linear(t["hidden_size"], cfg["embed_dim"])
        return parts.eval()

    from fergi.scorers._testing import make_blip_weights

    weights = make_blip_weights(tmp / "blip")
    images, prompts = _images(), ["a red cat", "the dog on a sofa", "a blue sky"]
    text = BertTokenizer.from_pretrained(str(tmp / "blip"))(prompts, padding="max_length", truncation=True,
                                                          max_length=35, return_tensors="pt")
    pixels = torch.stack([torch.from_numpy(preprocess(load_image(i), 32, "crop")) for i in images])

    blip = reference()
    blip.load_state_dict(torch.load(weights["blip"]["weights"], weights_only=True)["model"], strict=False)
    with torch.no_grad():  # BLIPScore.inference_rank's steps
        out = blip.text_encoder(text.input_ids, attention_mask=text.attention_mask, mode="text")
        txt = F.normalize(blip.text_proj(out.last_hidden_state[:, 0, :]))
        img = F.normalize(blip.vision_proj(blip.visual_encoder(pixels)[:, 0, :]), dim=-1)
    got = create_scorer("blip", **weights["blip"]).score(images, prompts)
    print(f"{'blip':<12} vs ImageReward's BLIP code: max |difference| {np.abs((txt * img).sum(-1).numpy() - got).max():.2e}")

    state = torch.load(weights["imagereward"]["weights"], weights_only=True)
    reward = reference()
    reward.load_state_dict({k.removeprefix("blip."): x for k, x in state.items() if k.startswith("blip.")}, strict=False)
    mlp = nn.Sequential(nn.Linear(t["hidden_size"], 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1)).eval()
    mlp.load_state_dict({k.removeprefix("mlp.layers."): x for k, x in state.items() if k.startswith("mlp.")})
    with torch.no_grad():  # ImageReward.score's steps
        emb = reward.visual_encoder(pixels)
        out = reward.text_encoder(text.input_ids, attention_mask=text.attention_mask, encoder_hidden_states=emb,
                                  encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long),
                                  return_dict=True)
        ref = ((mlp(out.last_hidden_state[:, 0, :]) - 0.16717362830052426) / 1.0333394966054072)[:, 0].numpy()
    got = create_scorer("imagereward", **weights["imagereward"]).score(images, prompts)
    print(f"{'imagereward':<12} vs ImageReward's BLIP code: max |difference| {np.abs(ref - got).max():.2e}")


def main(argv=None) -> None:
    site = Path((argv or sys.argv[1:] or ["refs/site"])[0])
    with tempfile.TemporaryDirectory() as tmp:
        if (site / "ImageReward").is_dir():
            check_imagereward(site, Path(tmp))
        if (site / "open_clip").is_dir():
            check_openclip(site, Path(tmp))


if __name__ == "__main__":
    main()
