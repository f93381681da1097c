"""Random-weight scorer checkpoints in the real files' layouts, for tests and benchmarks.

No weights can be downloaded in CI, so tests and ``benchmarks/bench_scorers.py`` build
models with the published architectures (``size="full"``) or tiny versions of them
(``size="tiny"``), save them exactly as the official checkpoints are laid out (OpenAI /
OpenCLIP state dicts, a transformers folder for PickScore, the aesthetic MLP's
``layers.*`` keys) and load them back through :func:`fergi.scorers.create_scorer`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fergi.scorers._blip import _VIS_BLOCK, BLIP_LARGE, _build
from fergi.scorers._clip import _BLOCK, _TOP, VIT_H_14, VIT_L_14, aesthetic_mlp

#: A tiny CLIP: the same layout, 2 layers a tower, 16-token context, MLPs 4x wide as
#: published (hpsv2's copy of OpenCLIP cannot build a text tower with another ratio).
TINY_CLIP = {
    "projection_dim": 16,
    "text_config": {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "max_position_embeddings": 16},
    "vision_config": {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
}


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level alphabet: printable bytes map to themselves, the rest
    # to code points from 256 up.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_tiny_tokenizer(folder: Path) -> dict:
    """A CLIP BPE tokenizer with the byte alphabet and a few merges (ids < 520).

    Returns the special ids, ``{"bos_token_id", "eos_token_id", "pad_token_id", "vocab_size"}``:
    as in CLIP's vocabulary, end-of-text is the largest id.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("r", "e"), ("re", "d</w>")]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    eos = len(vocab) - 1
    return {"bos_token_id": eos - 1, "eos_token_id": eos, "pad_token_id": eos, "vocab_size": len(vocab)}


def clip_config(arch: dict, special: dict | None = None) -> dict:
    """``arch`` with the tokenizer's special ids (and vocabulary size) in its text config."""
    cfg = copy.deepcopy(arch)
    if special:
        cfg["text_config"].update(special)
        cfg["text_config"]["vocab_size"] = max(special["vocab_size"],
                                               arch["text_config"].get("vocab_size", 0))
    return cfg


def random_clip(config: dict, seed: int = 0):
    """A transformers ``CLIPModel`` of ``config`` with seeded random weights."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(**config)).eval()
    with torch.no_grad():
        # Random init leaves LayerNorms at identity and logit_scale at its default;
        # perturb them so a wrongly mapped LayerNorm or scale cannot go unnoticed.
        for name, p in model.named_parameters():
            if "norm" in name or "logit_scale" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_to_openclip(model) -> dict:
    """The OpenAI / OpenCLIP state dict of a transformers ``CLIPModel`` (for writing test files)."""
    import torch

    sd = model.state_dict()
    out = {src: sd[dst] for src, dst in _TOP.items()}
    out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    for tower, prefix, n in (("visual.transformer", "vision_model", model.config.vision_config.num_hidden_layers),
                             ("transformer", "text_model", model.config.text_config.num_hidden_layers)):
        for i in range(n):
            base = f"{prefix}.encoder.layers.{i}."
            for kind in ("weight", "bias"):
                out[f"{tower}.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                    [sd[f"{base}self_attn.{p}_proj.{kind}"] for p in "qkv"])
                for stem, hf in _BLOCK.items():
                    out[f"{tower}.resblocks.{i}.{stem}.{kind}"] = sd[f"{base}{hf}.{kind}"]
    return {k: v.clone() for k, v in out.items()}


def make_scorer_weights(folder: Path, size: str = "tiny", seed: int = 0,
                        layout: str = "official") -> dict[str, dict]:
    """Write random weights for every scorer; return ``create_scorer`` options.

    Parameters
    ----------
    folder : Path
        Where the files go.
    size : {"tiny", "full"}
        Tiny architectures, or the published ViT-L/14 and ViT-H/14 sizes.
    seed : int
    layout : {"official", "hf"}
        ``official``: the published files (OpenAI ``ViT-L-14.pt``, HPS v2's
        ``{"state_dict": ...}``), which need ``config`` for a non-published size;
        ``hf``: transformers folders with their ``config.json`` and tokenizer, which
        need nothing else (what the command line's ``--weights NAME=PATH`` takes).

    Returns
    -------
    dict
        ``name -> {"weights": ..., "tokenizer": ..., "config": ..., ...}`` for
        :func:`fergi.scorers.create_scorer` (and the CLI's ``--weights``).
    """
    import torch

    folder = Path(folder)
    tok = folder / "tokenizer"
    special = write_tiny_tokenizer(tok)
    arch_l = TINY_CLIP if size == "tiny" else VIT_L_14
    arch_h = TINY_CLIP if size == "tiny" else VIT_H_14
    cfg_l, cfg_h = clip_config(arch_l, special), clip_config(arch_h, special)
    if size == "tiny":  # OpenAI's ViT-L/14 uses QuickGELU, OpenCLIP's ViT-H/14 exact GELU
        for cfg, act in ((cfg_l, "quick_gelu"), (cfg_h, "gelu")):
            cfg["text_config"]["hidden_act"] = cfg["vision_config"]["hidden_act"] = act

    clip = random_clip(cfg_l, seed)
    torch.save(hf_to_openclip(clip), folder / "ViT-L-14.pt")
    head = aesthetic_mlp(cfg_l["projection_dim"])
    torch.manual_seed(seed + 1)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    torch.save(head.state_dict(), folder / "sac+logos+ava1-l14-linearMSE.pth")
    hps = random_clip(cfg_h, seed + 2)
    # HPS v2's files wrap the OpenCLIP state dict: {"state_dict": ...}.
    torch.save({"state_dict": hf_to_openclip(hps)}, folder / "HPS_v2_compressed.pt")
    hps21 = random_clip(cfg_h, seed + 5)  # v2.1: the same architecture, other weights
    torch.save({"state_dict": hf_to_openclip(hps21)}, folder / "HPS_v2.1_compressed.pt")
    pick = random_clip(cfg_h, seed + 3)
    pick.save_pretrained(folder / "PickScore_v1")
    for f in ("vocab.json", "merges.txt"):
        (folder / "PickScore_v1" / f).write_bytes((tok / f).read_bytes())
    blip = make_blip_weights(folder, size, seed + 4)
    if layout == "hf":
        for name, model in (("clip-vit-large-patch14", clip), ("HPSv2", hps), ("HPSv2.1", hps21)):
            model.save_pretrained(folder / name)
            for f in ("vocab.json", "merges.txt"):
                (folder / name / f).write_bytes((tok / f).read_bytes())
        return {
            "clip": {"weights": folder / "clip-vit-large-patch14"},
            "aesthetic": {"weights": folder / "sac+logos+ava1-l14-linearMSE.pth",
                          "backbone": folder / "clip-vit-large-patch14"},
            "pickscore": {"weights": folder / "PickScore_v1"},
            "hpsv2": {"weights": folder / "HPSv2"},
            "hpsv2.1": {"weights": folder / "HPSv2.1"},
            **blip,
        }
    common = {"tokenizer": tok}
    return {
        "clip": {"weights": folder / "ViT-L-14.pt", "config": cfg_l, **common},
        "aesthetic": {"weights": folder / "sac+logos+ava1-l14-linearMSE.pth",
                      "backbone": folder / "ViT-L-14.pt", "config": cfg_l, **common},
        "pickscore": {"weights": folder / "PickScore_v1", "config": cfg_h, **common},
        "hpsv2": {"weights": folder / "HPS_v2_compressed.pt", "config": cfg_h, **common},
        "hpsv2.1": {"weights": folder / "HPS_v2.1_compressed.pt", "config": cfg_h, **common},
        **blip,
    }


#: A tiny BLIP: one 64-wide attention head a layer (heads are width // 64, as inferred).
TINY_BLIP = {
    "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 1, "image_size": 32, "patch_size": 8,
               "layer_norm_eps": 1e-6, "hidden_act": "gelu"},
    "text": {"vocab_size": 40, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 1, "max_position_embeddings": 40, "encoder_hidden_size": 64,
             "layer_norm_eps": 1e-12, "hidden_act": "gelu"},
    "embed_dim": 16,
    "max_length": 35,
}

_TINY_BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "the", "red", "cat",
                    "dog", "and", "on", "sofa", "of", "in", "blue", "sky", "##s", "!", ",", ".",
                    "photo", "painting", "house", "tree", "[DEC]", "[ENC]"]


def write_tiny_bert_vocab(folder: Path) -> None:
    """A WordPiece ``vocab.txt`` with BLIP's special tokens and a few words."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "vocab.txt").write_text("\n".join(_TINY_BERT_VOCAB) + "\n")


def hf_to_blip(parts) -> dict:
    """The salesforce/BLIP state-dict layout of fergi's BLIP parts (inverse of ``blip_to_hf``)."""
    inverse_block = {v: k for k, v in _VIS_BLOCK.items()}
    out = {}
    for key, value in parts.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("head."):
            out["mlp." + key[len("head."):]] = value
        elif key.startswith("text."):
            out["text_encoder." + key[len("text."):]] = value
        elif key.startswith(("vision_proj.", "text_proj.")):
            out[key] = value
        elif key == "vision.embeddings.class_embedding":
            out["visual_encoder.cls_token"] = value
        elif key == "vision.embeddings.position_embedding":
            out["visual_encoder.pos_embed"] = value
        elif key.startswith("vision.embeddings.patch_embedding."):
            out["visual_encoder.patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("vision.post_layernorm."):
            out["visual_encoder.norm." + key.rsplit(".", 1)[1]] = value
        else:
            _, _, _, i, rest = key.split(".", 4)
            stem, kind = rest.rsplit(".", 1)
            out[f"visual_encoder.blocks.{i}.{inverse_block[stem]}.{kind}"] = value
    return {k: v.clone() for k, v in out.items()}


def random_blip(config: dict, seed: int = 0, with_head: bool = True):
    """fergi's BLIP parts of ``config`` with seeded random weights (perturbed LayerNorms)."""
    import torch

    model = _build(config, with_head).to_empty(device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
                p.add_(0.1 * torch.randn_like(p))
            elif "head." in name:
                torch.nn.init.normal_(p, std=0.3)
            else:
                torch.nn.init.normal_(p, std=0.05)
        for name, buf in model.named_buffers():
            if name.endswith("position_ids"):
                buf.copy_(torch.arange(buf.shape[-1]).expand(buf.shape))
    return model.eval()


def make_blip_weights(folder: Path, size: str = "tiny", seed: int = 0) -> dict[str, dict]:
    """Random ``model_large.pth`` (BLIP) and ``ImageReward.pt`` files in the official layouts.

    The BERT ``vocab.txt`` is written beside them, where the scorers find it.
    """
    import torch

    folder = Path(folder)
    write_tiny_bert_vocab(folder)
    config = copy.deepcopy(TINY_BLIP if size == "tiny" else BLIP_LARGE)
    blip = random_blip(config, seed, with_head=False)
    torch.save({"model": hf_to_blip(blip)}, folder / "model_large.pth")
    reward = random_blip(config, seed + 1, with_head=True)
    torch.save({"blip." + k if not k.startswith("mlp.") else k: v
                for k, v in hf_to_blip(reward).items()}, folder / "ImageReward.pt")
    return {"blip": {"weights": folder / "model_large.pth"},
            "imagereward": {"weights": folder / "ImageReward.pt"}}


def save_torchscript(state_dict: dict, path: Path) -> None:
    """Save ``state_dict`` as a TorchScript archive, as OpenAI ships ``ViT-L-14.pt``."""
    import torch
    from torch import nn

    class _Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = _Holder()
    for key, value in state_dict.items():
        *path_parts, leaf = key.split(".")
        module = root
        for part in path_parts:
            if not isinstance(getattr(module, part, None), nn.Module):
                module.add_module(part, _Holder())
            module = getattr(module, part)
        if value.is_floating_point():
            module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            module.register_buffer(leaf, value.clone())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(root).save(str(path))
