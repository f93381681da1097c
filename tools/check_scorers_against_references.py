"""Check fergi's scorers against the reference libraries' own code, where pip cannot install them.

Usage:
    pip download --no-deps -d refs open_clip_torch==3.3.0 hpsv2==1.2.0 image-reward==1.5 torchvision
    for f in refs/*.whl; do python -m zipfile -e "$f" refs/site/; done
    python tools/check_scorers_against_references.py refs/site [--device cuda]

``open_clip_torch``, ``hpsv2`` and ``image-reward`` need torchvision, whose PyPI wheels
do not import with the CPU torch build fergi pins (its C++ operators do not register),
and ``image-reward`` needs timm 0.6, fairscale and helpers that transformers 5 removed.
So the tests compare fergi with the published formulas written out, and this script
goes further on a machine with the unpacked wheels. Nothing of them is copied into
fergi: the script imports the references from the folder the user points it at.

What runs as the references' own code:

* torchvision's transforms (``Resize``, ``CenterCrop``, ``ToTensor``, ``Normalize``,
  ``functional.resize``/``pad``): its Python package is imported without its compiled
  operators, which the transforms do not use;
* the image transforms: ImageReward's ``_transform`` (OpenAI CLIP's, used by CLIP
  score, aesthetic, BLIP score and ImageReward) and hpsv2's copy of OpenCLIP's
  ``image_transform(..., resize_longest_max=True)`` (HPS v2);
* the tokenizers: OpenCLIP's and hpsv2's ``SimpleTokenizer`` (OpenAI CLIP's BPE with
  ``ftfy`` cleaning), on OpenCLIP's real BPE vocabulary and on the tiny test vocabulary;
* the scoring methods: ImageReward's ``CLIPScore.score``, ``AestheticScore.score``,
  ``BLIPScore.score`` and ``ImageReward.score``, and ``hpsv2.img_score.score``, called
  on image files with the reference models built from the same tiny random-weight
  checkpoints fergi loads (OpenCLIP's ``CLIP`` class for OpenAI's ViT-L/14, hpsv2's
  ``CLIP`` for HPS v2; ImageReward's ``med.py`` BERT and ``vit.py``).

What is stubbed, and why: ``clip`` (openai/CLIP is not on PyPI; its ``tokenize`` is
OpenCLIP's ``SimpleTokenizer``, a copy of it), timm's ``PatchEmbed`` (written out as
timm 0.6 defines it), fairscale's checkpoint wrapper, transformers 4's
``invert_attention_mask``, ``clint`` and ``turtle`` (imported, unused). The models are
tiny (32-pixel images, a 16-token context), so the reference transforms are built for
32 pixels and hpsv2's tokenizer gets ``context_length=16``; PickScore's reference is
the inference in its README (transformers' ``CLIPProcessor`` and ``CLIPModel``),
written out with transformers' PIL image processor.

It prints, for each scorer, the largest difference of the preprocessed pixels (both
sides fed the same raw PIL images: RGB of several sizes, palette, grayscale, RGBA) and
of the scores (prompts with curly quotes, ligatures, full-width letters and emoji),
in fp32 and with ``precision="fp16"``.

Why over 500 lines: one standalone maintainer script (not imported by fergi or its
tests), one comparison per scorer family (CLIP, Aesthetic, PickScore, HPS v2, BLIP,
ImageReward), each next to the reference code it loads.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import transformers  # noqa: F401  (imported before the stubs, so it sees none of them)
from PIL import Image
from torch import nn
from transformers import BertTokenizer, CLIPTokenizer

from fergi.scorers import create_scorer
from fergi.scorers._clip import CLIPFamilyScorer, load_clip_tokenizer
from fergi.scorers._testing import TINY_BLIP, TINY_CLIP, make_scorer_weights, random_clip

PROMPTS = [
    "a red cat on a sofa",
    "“A red cat” on the sofa",          # curly quotes
    "the dog‘s toy’",
    "ﬁsh and ﬂowers",                    # ligatures
    "ＦＵＬＬ ｗｉｄｔｈ\u3000ｃａｔ",      # full-width letters and space
    "a cat 🐱 and a dog 🐶",              # emoji
    "cafÃ© au lait &amp;amp; croissants",  # mojibake, HTML entity
]
BPE_TEXTS = PROMPTS + [
    "A photo of a cat", "a beautiful sunset over the mountains, trending on artstation, 4k",
    "Portrait of an old man; oil painting (Rembrandt style) -- highly detailed!!!",
    "café au lait & croissants", "a dog's toy, it's red", "  multiple   spaces\tand tabs ",
    "numbers 1234 and 3.14", "Mixed CASE Words", "naïve “smart” quotes — and ﬁnal ligatures",
    "Ｔｏｋｙｏ　ｔｏｗｅｒ at night", "🌅 sunrise 🏔️ mountains",
]


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _torchvision(site: Path) -> str:
    """Import torchvision's transforms: the real package, or its Python code without its operators."""
    try:
        import torchvision

        return f"torchvision {torchvision.__version__}"
    except Exception:  # the CUDA wheel's operators do not register with the CPU torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    folder = site / "torchvision"
    if not folder.is_dir():
        raise SystemExit(f"{site}: no torchvision here (pip download --no-deps torchvision, then unzip it)")
    _module("torchvision", __path__=[str(folder)], __version__="(transforms only)")
    import torchvision.transforms
    import torchvision.transforms.functional

    version = (site / "torchvision" / "version.py")
    text = version.read_text() if version.is_file() else ""
    found = next((line.split("=")[1].strip().strip("'\"") for line in text.splitlines()
                  if line.startswith("__version__")), "?")
    return f"torchvision {found} (transforms only, without its compiled operators)"


def _images(folder: Path) -> list[Path]:
    """Raw test images as files: RGB of several sizes (down and up), palette, grayscale, RGBA."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    images = {
        "square.png": Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
        "landscape.png": Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)),
        "portrait.png": Image.fromarray(rng.integers(0, 256, (70, 33, 3), dtype=np.uint8)),
        "small.png": Image.fromarray(rng.integers(0, 256, (20, 27, 3), dtype=np.uint8)),
        "palette.png": Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).quantize(32),
        "gray.png": Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA"),
    }
    paths = []
    for name, img in images.items():
        img.save(folder / name)
        paths.append(folder / name)
    return paths


def _tiny_bpe_gz(tokenizer_dir: Path, out: Path) -> Path:
    """The tiny test tokenizer's merges as the gzip file OpenAI's ``SimpleTokenizer`` reads.

    ``SimpleTokenizer`` builds its vocabulary as bytes, bytes + ``</w>``, the merges,
    then the two special tokens: the order ``write_tiny_tokenizer`` uses, so the ids
    agree. (No trailing newline: it would add an empty merge.)
    """
    lines = (tokenizer_dir / "merges.txt").read_text().rstrip("\n")
    with gzip.open(out, "wt", encoding="utf-8") as f:
        f.write(lines)
    return out


def _report(name: str, against: str, diff: float, extra: str = "") -> None:
    print(f"  {name:<12} vs {against:<42} max |difference| {diff:.2e}{extra}")


# -- stubs for the model code ----------------------------------------------------------------

class _PatchEmbed(nn.Module):
    """timm 0.6's ``PatchEmbed`` (flatten, no norm), written out."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, **_):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def _stub_model_dependencies(site: Path, clip_tokenize) -> None:
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
    _module("clint")
    _module("clint.textui", progress=None)
    _module("turtle", forward=None)
    # openai/CLIP is not on PyPI: its tokenize(text, truncate=True) is SimpleTokenizer's.
    clip = _module("clip", tokenize=clip_tokenize, load=None)
    clip.model = _module("clip.model", convert_weights=lambda model: model.half())
    # ImageReward as a package whose BLIP_Pretrain is never built (the tool builds the parts).
    _module("ImageReward", __path__=[str(site / "ImageReward")])
    _module("ImageReward.models", __path__=[str(site / "ImageReward" / "models")])
    _module("ImageReward.models.BLIP", __path__=[str(site / "ImageReward" / "models" / "BLIP")])
    _module("ImageReward.models.BLIP.blip_pretrain", BLIP_Pretrain=None)
    _module("ImageReward.models.BLIP.blip", load_checkpoint=None)


def _import_hpsv2(site: Path) -> None:
    """``hpsv2.img_score`` with its own copy of OpenCLIP.

    The hpsv2 1.2.0 wheel lacks the BPE file its tokenizer opens at import
    (``bpe_simple_vocab_16e6.txt.gz``, in its git repository): OpenCLIP's copy of the
    same OpenAI file is read in its place.
    """
    wanted = site / "hpsv2" / "src" / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"
    if wanted.is_file():
        import hpsv2.img_score
        return
    print(f"  note: {wanted.name} is missing from hpsv2; reading OpenCLIP's copy of OpenAI's BPE instead")
    real_open = gzip.open

    def redirected(path, *args, **kwargs):
        if Path(path) == wanted:
            path = site / "open_clip" / wanted.name
        return real_open(path, *args, **kwargs)

    gzip.open = redirected
    try:
        import hpsv2.img_score  # noqa: F401
    finally:
        gzip.open = real_open


def _by_path(scorer):
    """ImageReward's ``score(prompt, image_path)`` as ``(path, prompt)``."""
    return lambda path, prompt: scorer.score(prompt, path)


def _instance(cls, **attrs):
    """A reference scorer object without its ``__init__`` (which downloads): attributes set by hand."""
    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    for key, value in attrs.items():
        setattr(obj, key, value)
    return obj


def _openclip_model(clip_cls, quick_gelu: bool, vocab_size: int, output_dict: bool = False):
    vc, tc = TINY_CLIP["vision_config"], TINY_CLIP["text_config"]
    kwargs = {"output_dict": True} if output_dict else {}
    return clip_cls(embed_dim=TINY_CLIP["projection_dim"], quick_gelu=quick_gelu,
                    vision_cfg={"image_size": vc["image_size"], "layers": vc["num_hidden_layers"],
                                "width": vc["hidden_size"], "patch_size": vc["patch_size"],
                                "head_width": vc["hidden_size"] // vc["num_attention_heads"],
                                "mlp_ratio": vc["intermediate_size"] / vc["hidden_size"]},
                    # (hpsv2's text config has no mlp_ratio: 4, as TINY_CLIP's)
                    text_cfg={"context_length": tc["max_position_embeddings"], "vocab_size": vocab_size,
                              "width": tc["hidden_size"], "heads": tc["num_attention_heads"],
                              "layers": tc["num_hidden_layers"]}, **kwargs).eval()


# -- checks ------------------------------------------------------------------------------------

def check_tokenizers(site: Path, tmp: Path) -> None:
    """OpenCLIP's and hpsv2's SimpleTokenizer on OpenCLIP's real BPE vs fergi's text path."""
    from open_clip.tokenizer import SimpleTokenizer

    hps_tok = sys.modules["hpsv2.src.open_clip.tokenizer"]
    st = SimpleTokenizer()
    hps = hps_tok._tokenizer  # built at import, on OpenAI's BPE
    folder = tmp / "bpe"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(st.encoder))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    hf = load_clip_tokenizer(folder)
    # fergi's own tokenize() of the CLIP and HPS scorers, with the real vocabulary.
    model = random_clip({**TINY_CLIP, "text_config": {**TINY_CLIP["text_config"], "vocab_size": 49408}})
    fergi = CLIPFamilyScorer(model, hf, "cosine", clean_text=True, device="cpu")
    fergi.context_length = 77
    eot = st.encoder["<end_of_text>"]
    same = same_hps = raw_same = 0
    for text in BPE_TEXTS:
        ref = st(text, context_length=77)[0].tolist()
        words = ref[1: ref.index(eot)]
        ref_hps = [hps.encoder["<start_of_text>"]] + hps.encode(text)
        # Compare the words: the dumped vocabulary re-adds the special tokens at other ids.
        ids = fergi.tokenize([text])[0][0].tolist()
        mine = ids[1: ids.index(hf.eos_token_id)]
        same += mine == words
        same_hps += mine == ref_hps[1:]
        raw_same += hf(text)["input_ids"][1:-1] == words
    print(f"  tokenizer    fergi == open_clip SimpleTokenizer on {same} of {len(BPE_TEXTS)} prompts, == hpsv2's "
          f"on {same_hps}; without the ftfy cleaning {raw_same} of {len(BPE_TEXTS)}")


def check_preprocessing(site: Path, tmp: Path, weights: dict, paths: list[Path]) -> None:
    """Both sides fed the same raw image files: the references' transforms vs fergi's ``preprocess``."""
    from transformers import CLIPImageProcessorPil

    from fergi.scorers._images import CLIP_MEAN, CLIP_STD

    ir = sys.modules["ImageReward.ImageReward"]
    hps_transform = sys.modules["hpsv2.src.open_clip.transform"]
    size = TINY_CLIP["vision_config"]["image_size"]
    references = {
        "clip": ("ImageReward/OpenAI CLIP _transform", ir._transform(size)),
        "blip": ("ImageReward _transform", ir._transform(size)),
        "pickscore": ("transformers CLIPImageProcessorPil", lambda img: torch.from_numpy(CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD))(images=img, return_tensors="np")["pixel_values"][0])),
        "hpsv2": ("hpsv2 image_transform(resize_longest_max)",
                  hps_transform.image_transform(size, is_train=False, resize_longest_max=True)),
    }
    for name, (label, transform) in references.items():
        scorer = create_scorer(name, **weights[name])
        worst, worst_image = 0.0, ""
        for path in paths:
            if path.name == "rgba.png" and name in ("hpsv2", "pickscore"):
                # hpsv2 keeps RGBA as 4 channels, which its model cannot take. transformers 5
                # composites transparency onto white; earlier releases converted with PIL
                # (alpha dropped), as fergi does: reported below.
                continue
            with Image.open(path) as img:
                ref = transform(img).numpy()
            diff = float(np.abs(ref - scorer.preprocess(path)).max())
            if diff >= worst:
                worst, worst_image = diff, path.name
        _report(name, label, worst, f" (worst: {worst_image})")
    # torchvision <= 0.16 did not antialias tensor resizes: hpsv2's transform with that resize
    # against fergi's antialias=False.
    real_f = hps_transform.F
    hps_transform.F = types.SimpleNamespace(resize=functools.partial(real_f.resize, antialias=False), pad=real_f.pad)
    try:
        old_transform = hps_transform.image_transform(size, is_train=False, resize_longest_max=True)
        scorer = create_scorer("hpsv2", antialias=False, **weights["hpsv2"])
        worst = 0.0
        for path in paths[:-1]:
            with Image.open(path) as img:
                worst = max(worst, float(np.abs(old_transform(img).numpy() - scorer.preprocess(path)).max()))
    finally:
        hps_transform.F = real_f
    _report("hpsv2", "the same, resize(antialias=False) (tv <= 0.16)", worst, " (fergi antialias=False)")
    with Image.open(paths[-1]) as img:
        on_white = references["pickscore"][1](img).numpy()
    dropped = create_scorer("pickscore", **weights["pickscore"]).preprocess(paths[-1])
    print(f"  {'':<12}    RGBA: transformers 5 composites onto white, fergi drops alpha as PIL's convert "
          f"does: max |difference| {np.abs(on_white - dropped).max():.2e}")


def check_scores(site: Path, tmp: Path, weights: dict, paths: list[Path], device: str) -> None:
    """fergi's scores vs the references' own scoring methods, on files and raw prompts, fp32 and fp16."""
    from open_clip.model import CLIP as OpenCLIP

    ir = sys.modules["ImageReward.ImageReward"]
    size = TINY_CLIP["vision_config"]["image_size"]
    vocab = json.loads((weights["clip"]["tokenizer"] / "vocab.json").read_text())
    dev = torch.device(device)
    pairs = [(p, PROMPTS[i % len(PROMPTS)]) for i, p in enumerate(paths)]
    rgb_pairs = [(p, t) for p, t in pairs if p.name != "rgba.png"]

    def compare(name, label, reference, use_pairs, half_reference=None):
        """``reference(path, prompt)`` and ``half_reference`` (its CUDA fp16 run) against fergi."""
        ref = np.array([reference(str(p), t) for p, t in use_pairs], dtype=np.float64)
        files, texts = [p for p, _ in use_pairs], [t for _, t in use_pairs]
        got = create_scorer(name, device=device, **weights[name]).score(files, texts)
        _report(name, label, float(np.abs(ref - got).max()), f" (scores {ref.min():.3g} to {ref.max():.3g})")
        fp16 = create_scorer(name, device=device, precision="fp16", **weights[name]).score(files, texts)
        extra = ""
        if half_reference is not None and dev.type == "cuda":
            half = np.array([half_reference(str(p), t) for p, t in use_pairs], dtype=np.float64)
            extra = f"; vs the reference's own CUDA fp16 run {np.abs(half - fp16).max():.2e}"
        print(f"  {'':<12}    precision='fp16': vs the reference in fp32 {np.abs(ref - fp16).max():.2e}{extra}")

    # CLIP score and aesthetic: ImageReward's CLIPScore / AestheticScore on OpenCLIP's CLIP
    # (the OpenAI architecture: QuickGELU), loaded with the ViT-L-14.pt fergi reads.
    clip_score = _load("ImageReward.models.CLIPScore", site / "ImageReward" / "models" / "CLIPScore.py")
    aesthetic = _load("ImageReward.models.AestheticScore", site / "ImageReward" / "models" / "AestheticScore.py")
    model = _openclip_model(OpenCLIP, True, len(vocab))
    model.load_state_dict(torch.load(weights["clip"]["weights"], weights_only=True), strict=True)
    model = model.to(dev)
    ref = _instance(clip_score.CLIPScore, device=dev, clip_model=model, preprocess=ir._transform(size))
    half_model = _openclip_model(OpenCLIP, True, len(vocab)).to(dev)
    half_model.load_state_dict(model.state_dict())
    half_model.half()  # clip.load on CUDA: OpenAI's fp16 weights
    half = _instance(clip_score.CLIPScore, device=dev, clip_model=half_model, preprocess=lambda im: ir._transform(size)(im).half())
    with torch.no_grad():
        compare("clip", "ImageReward CLIPScore.score (OpenCLIP CLIP)", _by_path(ref), pairs, _by_path(half))
        mlp = aesthetic.MLP(TINY_CLIP["projection_dim"])
        mlp.load_state_dict(torch.load(weights["aesthetic"]["weights"], weights_only=True))
        mlp = mlp.to(dev).eval()
        ref = _instance(aesthetic.AestheticScore, device=dev, clip_model=model, mlp=mlp, preprocess=ir._transform(size))
        half = _instance(aesthetic.AestheticScore, device=dev, clip_model=half_model, mlp=mlp,
                         preprocess=lambda im: ir._transform(size)(im).half())
        compare("aesthetic", "ImageReward AestheticScore.score", _by_path(ref), pairs, _by_path(half))

    # HPS v2 and v2.1: hpsv2.img_score.score itself, its model the hpsv2 copy of OpenCLIP's
    # CLIP at the tiny size (initialize_model would build the 1B-parameter ViT-H/14).
    img_score = sys.modules["hpsv2.img_score"]
    hps_clip = sys.modules["hpsv2.src.open_clip.model"].CLIP
    hps_transform = sys.modules["hpsv2.src.open_clip.transform"]
    hps_tok = sys.modules["hpsv2.src.open_clip.tokenizer"]
    hps_tok._tokenizer = hps_tok.SimpleTokenizer(str(tmp / "tiny_bpe.txt.gz"))
    img_score.get_tokenizer = lambda name: functools.partial(hps_tok.tokenize, context_length=16)
    img_score.device = device
    for name in ("hpsv2", "hpsv2.1"):
        img_score.model_dict.clear()
        img_score.model_dict["model"] = _openclip_model(hps_clip, False, len(vocab), output_dict=True)
        img_score.model_dict["preprocess_val"] = hps_transform.image_transform(size, is_train=False,
                                                                                resize_longest_max=True)
        cp = str(weights[name]["weights"])
        # On CUDA hpsv2 runs under autocast itself: the same call is its fp16 reference.
        compare(name, "hpsv2.img_score.score", lambda p, t, cp=cp: img_score.score(p, t, cp=cp)[0], rgb_pairs,
                lambda p, t, cp=cp: img_score.score(p, t, cp=cp)[0])

    # PickScore: its README's inference with transformers' CLIPProcessor and CLIPModel.
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from fergi.scorers._images import CLIP_MEAN, CLIP_STD

    folder = str(weights["pickscore"]["weights"])
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)), tokenizer=CLIPTokenizer.from_pretrained(folder))
    pick = CLIPModel.from_pretrained(folder).eval().to(dev)

    def pickscore(path, prompt, model=pick, dtype=torch.float32):
        with Image.open(path) as img:
            image_inputs = processor(images=[img], padding=True, truncation=True, max_length=16,
                                     return_tensors="pt").to(dev)
        text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=16,
                                return_tensors="pt").to(dev)
        with torch.no_grad():
            image_embs = model.get_image_features(pixel_values=image_inputs["pixel_values"].to(dtype))
            image_embs = getattr(image_embs, "pooler_output", image_embs)
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text_inputs)
            text_embs = getattr(text_embs, "pooler_output", text_embs)
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            return (model.logit_scale.exp() * (text_embs @ image_embs.T)[0]).float().item()

    # (Not the RGBA file: transformers 5 composites it onto white, see the preprocessing check.)
    compare("pickscore", "PickScore README inference (transformers)", pickscore, rgb_pairs)

    # BLIP score and ImageReward: their score methods on ImageReward's med.py BERT and vit.py.
    med = _load("imagereward_med", site / "ImageReward" / "models" / "BLIP" / "med.py")
    vit = _load("imagereward_vit", site / "ImageReward" / "models" / "BLIP" / "vit.py")
    blip_score = _load("ImageReward.models.BLIPScore", site / "ImageReward" / "models" / "BLIPScore.py")

    def invert(self, mask):  # transformers 4's ModuleUtilsMixin.invert_attention_mask
        ext = (mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]).float()
        return (1.0 - ext) * torch.finfo(torch.float32).min

    med.BertPreTrainedModel.init_weights = lambda self: None  # the checkpoint sets every weight
    med.BertModel.invert_attention_mask = invert
    if not hasattr(med.BertModel, "get_head_mask"):
        med.BertModel.get_head_mask = lambda self, head_mask, n: [None] * n
    cfg, v, t = TINY_BLIP, TINY_BLIP["vision"], TINY_BLIP["text"]
    bert_tokenizer = BertTokenizer.from_pretrained(str(weights["blip"]["weights"].parent))

    def parts():
        blip = nn.Module()
        blip.visual_encoder = vit.VisionTransformer(
            img_size=v["image_size"], patch_size=v["patch_size"], embed_dim=v["hidden_size"],
            depth=v["num_hidden_layers"], num_heads=v["num_attention_heads"],
            mlp_ratio=v["intermediate_size"] / v["hidden_size"])
        bert = med.BertConfig(vocab_size=t["vocab_size"], hidden_size=t["hidden_size"],
                              num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
                              intermediate_size=t["intermediate_size"], layer_norm_eps=1e-12,
                              max_position_embeddings=t["max_position_embeddings"], add_cross_attention=True)
        bert.encoder_width = v["hidden_size"]
        blip.text_encoder = med.BertModel(config=bert, add_pooling_layer=False)
        blip.vision_proj = nn.Linear(v["hidden_size"], cfg["embed_dim"])
        blip.text_proj = nn.Linear(t["hidden_size"], cfg["embed_dim"])
        blip.tokenizer = bert_tokenizer
        return blip

    blip = parts()
    blip.load_state_dict(torch.load(weights["blip"]["weights"], weights_only=True)["model"], strict=False)
    ref = _instance(blip_score.BLIPScore, device=dev, blip=blip.to(dev).eval(), preprocess=ir._transform(size))
    with torch.no_grad():
        compare("blip", "ImageReward BLIPScore.score", _by_path(ref), pairs)
    state = torch.load(weights["imagereward"]["weights"], weights_only=True)
    reward = parts()
    reward.load_state_dict({k.removeprefix("blip."): x for k, x in state.items() if k.startswith("blip.")}, strict=False)
    mlp = ir.MLP(t["hidden_size"])
    mlp.load_state_dict({k.removeprefix("mlp."): x for k, x in state.items() if k.startswith("mlp.")})
    ref = _instance(ir.ImageReward, device=dev, blip=reward.to(dev).eval(), mlp=mlp.to(dev).eval(),
                    preprocess=ir._transform(size), mean=0.16717362830052426, std=1.0333394966054072)
    with torch.no_grad():
        compare("imagereward", "ImageReward.score", _by_path(ref), pairs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", nargs="?", default="refs/site", type=Path,
                        help="folder with the unpacked open_clip, hpsv2, ImageReward and torchvision wheels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    missing = [n for n in ("open_clip", "hpsv2", "ImageReward") if not (site / n).is_dir()]
    if missing:
        raise SystemExit(f"{site}: missing {', '.join(missing)} (see the usage in this script's docstring)")
    print(f"references from {site}; {_torchvision(site)}; device {args.device}; torch {torch.__version__}")
    sys.path.insert(0, str(site))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = make_scorer_weights(tmp / "weights")
        bpe = _tiny_bpe_gz(weights["clip"]["tokenizer"], tmp / "tiny_bpe.txt.gz")
        from open_clip.tokenizer import SimpleTokenizer

        tiny = SimpleTokenizer(str(bpe))
        _stub_model_dependencies(site, lambda text, truncate=True: tiny(text, context_length=16))
        _load("ImageReward.ImageReward", site / "ImageReward" / "ImageReward.py")
        _import_hpsv2(site)

        paths = _images(tmp / "images")
        print("text: tokenisation with OpenCLIP's real BPE vocabulary")
        check_tokenizers(site, tmp)
        print("images: the same raw files through each reference's transform and fergi's preprocess")
        check_preprocessing(site, tmp, weights, paths)
        print(f"scores: the same files and prompts ({len(PROMPTS)} prompts, {sum(1 for p in PROMPTS if not p.isascii())} "
              "non-ASCII) through each reference's scoring code and fergi's scorer")
        check_scores(site, tmp, weights, paths, args.device)


if __name__ == "__main__":
    main()
