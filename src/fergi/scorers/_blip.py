"""BLIP score and ImageReward on transformers' BLIP modules, from the official checkpoints.

The ``image-reward`` package cannot be installed with fergi's stack (it pins timm
0.6.13 and imports helpers that transformers 5 removed, and needs torchvision), so
fergi builds the same network from transformers' BLIP parts and renames the official
checkpoints' keys (``model_large.pth`` of salesforce/BLIP; ``ImageReward.pt`` of
THUDM/ImageReward, ``blip.*`` plus ``mlp.*``):

* vision: BLIP's ViT-L/16 (timm ``VisionTransformer``, LayerNorm eps 1e-6) is
  transformers' ``BlipVisionModel``;
* text: BLIP's ``med.py`` BERT (cross-attention in every layer) is transformers'
  ``BlipTextModel`` with the same key names;
* ``vision_proj`` / ``text_proj`` (BLIP score) and ImageReward's MLP head.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fergi._errors import FergiError
from fergi.scorers._base import Scorer
from fergi.scorers._clip import aesthetic_mlp, read_state_dict

logger = logging.getLogger(__name__)

#: BLIP ViT-L/16 at 224 px with the med_config.json BERT-base text encoder (ImageReward).
BLIP_LARGE = {
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
               "num_attention_heads": 16, "image_size": 224, "patch_size": 16,
               "layer_norm_eps": 1e-6, "hidden_act": "gelu"},
    "text": {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072,
             "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 512,
             "encoder_hidden_size": 1024, "layer_norm_eps": 1e-12, "hidden_act": "gelu"},
    "embed_dim": 256,
    "max_length": 35,
}
#: ImageReward's reward normalisation (ImageReward.py: mean and std of its training rewards).
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072

_VIS_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
              "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def blip_to_hf(state_dict: dict, prefix: str = "") -> dict:
    """Rename the BLIP parts fergi uses (``visual_encoder``, ``text_encoder``, projections, ImageReward's ``mlp``).

    Other entries (momentum encoders, queues, the decoder, ITM head) are left out.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("mlp.layers."):
            out["head." + key[len("mlp."):]] = value
            continue
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if key.startswith("visual_encoder."):
            rest = key[len("visual_encoder."):]
            if rest == "cls_token":
                out["vision.embeddings.class_embedding"] = value
            elif rest == "pos_embed":
                out["vision.embeddings.position_embedding"] = value
            elif rest.startswith("patch_embed.proj."):
                out["vision.embeddings.patch_embedding." + rest.rsplit(".", 1)[1]] = value
            elif rest.startswith("norm."):
                out["vision.post_layernorm." + rest.rsplit(".", 1)[1]] = value
            elif rest.startswith("blocks."):
                _, i, name = rest.split(".", 2)
                stem, kind = name.rsplit(".", 1)
                out[f"vision.encoder.layers.{i}.{_VIS_BLOCK[stem]}.{kind}"] = value
        elif key.startswith("text_encoder.") and ".pooler." not in key:
            out["text." + key[len("text_encoder."):]] = value
        elif key.startswith(("vision_proj.", "text_proj.")):
            out[key] = value
    return out


def _build(config: dict, with_head: bool):
    import torch
    from torch import nn
    from transformers import BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    vision_cfg = BlipVisionConfig(**config["vision"])
    # is_decoder only makes transformers create the cross-attention layers that BLIP's
    # med.py BERT has in every layer; the forward pass is bidirectional (is_decoder=False).
    special = {k: v for k, v in (("bos_token_id", 30522), ("sep_token_id", 102), ("pad_token_id", 0))
               if v < config["text"]["vocab_size"]}  # BLIP's ids; absent from tiny vocabularies
    text_cfg = BlipTextConfig(**{"bos_token_id": None, "sep_token_id": None, "pad_token_id": 0,
                                 **special, **config["text"]}, is_decoder=True)
    for cfg in (vision_cfg, text_cfg):
        cfg._attn_implementation = "eager"

    class BLIPParts(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision = BlipVisionModel(vision_cfg)
            self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
            self.vision_proj = nn.Linear(vision_cfg.hidden_size, config["embed_dim"])
            self.text_proj = nn.Linear(text_cfg.hidden_size, config["embed_dim"])
            # ImageReward's head has the aesthetic predictor's layout on 768-d text features.
            self.head = aesthetic_mlp(text_cfg.hidden_size) if with_head else None

    with torch.device("meta"):
        return BLIPParts()


def load_blip(path: Path, config: dict | None, what: str, with_head: bool):
    """BLIP parts with the weights of ``path`` (``model_large.pth`` or ``ImageReward.pt``).

    ``config`` None: the architecture is read off the checkpoint (:func:`infer_blip_config`).
    """
    import torch

    state = read_state_dict(path)
    if config is None:
        try:
            config = infer_blip_config(state)
        except (KeyError, IndexError) as exc:
            raise FergiError(f"{path}: not a {what} checkpoint (no {exc})") from None
    prefix = "blip." if any(k.startswith("blip.") for k in state) else ""
    converted = blip_to_hf(state, prefix)
    model = _build(config, with_head)
    if not with_head:
        model.head = None
    try:
        missing, _ = model.load_state_dict(converted, strict=False, assign=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        raise FergiError(f"{path}: weights do not fit the {what} architecture "
                         f"({(lines[1] if len(lines) > 1 else lines[0]).strip()})") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if with_head is False:
        missing = [k for k in missing if not k.startswith("head.")]
    if missing:
        raise FergiError(f"{path}: not a {what} checkpoint (missing {', '.join(missing[:3])})")
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            module_name, _, buf_name = name.rpartition(".")
            module = model.get_submodule(module_name)
            module.register_buffer(buf_name, torch.arange(buf.shape[-1]).expand(buf.shape),
                                   persistent=False)
    return model.float().eval()


def load_bert_tokenizer(path: Path):
    """BERT's uncased WordPiece tokenizer (BLIP's) from a folder with ``vocab.txt``."""
    from transformers import BertTokenizer

    path = Path(path)
    if not (path / "vocab.txt").is_file():
        raise FergiError(f"{path}: no BERT tokenizer here (needs vocab.txt of bert-base-uncased)")
    try:
        return BertTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FergiError(f"{path}: cannot load the BERT tokenizer ({exc})") from None


class BLIPScorer(Scorer):
    """``kind="itc"``: BLIP score, the cosine of ``vision_proj(image CLS)`` and
    ``text_proj(text CLS)`` (text encoded alone); ``kind="imagereward"``: ImageReward,
    the MLP of the text CLS encoded with cross-attention to the image, standardised
    by ImageReward's mean and std."""

    preprocess_mode = "crop"

    def __init__(self, model, tokenizer, kind: str, max_length: int = 35, **options):
        super().__init__(**options)
        self.kind = kind
        self.model = model.to(self.device, self.dtype).eval()
        if model.head is not None:  # the reference casts text features to float32 first
            self.model.head.float()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_size = int(model.vision.config.image_size)

    def _tokens(self, prompts):
        t = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                           return_tensors="pt")
        return t["input_ids"].to(self.device), t["attention_mask"].to(self.device)

    def _score_batch(self, pixels, prompts):
        import torch.nn.functional as F

        image_embeds = self.model.vision(pixel_values=pixels).last_hidden_state
        if self.kind == "itc":
            unique = list(dict.fromkeys(prompts))
            ids, mask = self._tokens(unique)
            text = self.model.text(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
            text = F.normalize(self.model.text_proj(text).float(), dim=-1)
            text = text[[unique.index(p) for p in prompts]]
            image = F.normalize(self.model.vision_proj(image_embeds[:, 0]).float(), dim=-1)
            return (image * text).sum(-1)
        ids, mask = self._tokens(list(prompts))
        out = self.model.text(input_ids=ids, attention_mask=mask,
                              encoder_hidden_states=image_embeds).last_hidden_state[:, 0]
        reward = self.model.head(out.float()).reshape(-1)
        return (reward - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


def infer_blip_config(state: dict) -> dict:
    """The architecture of a BLIP checkpoint read off its tensor shapes.

    As openai/CLIP's ``build_model`` does, head counts are ``width // 64`` (ViT-L:
    16, BERT-base: 12).
    """
    prefix = "blip." if any(k.startswith("blip.") for k in state) else ""

    def get(key):
        try:
            return state[prefix + key]
        except KeyError:
            raise KeyError(prefix + key) from None

    width = get("visual_encoder.cls_token").shape[-1]
    patch = get("visual_encoder.patch_embed.proj.weight").shape[-1]
    n_pos = get("visual_encoder.pos_embed").shape[1] - 1
    depth = len({k.split(".")[2 + prefix.count(".")] for k in state
                 if k.startswith(prefix + "visual_encoder.blocks.")})
    t_width = get("text_encoder.embeddings.word_embeddings.weight").shape[1]
    t_depth = len({k.split(".")[3 + prefix.count(".")] for k in state
                   if k.startswith(prefix + "text_encoder.encoder.layer.")})
    return {
        "vision": {"hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": max(1, width // 64),
                   "intermediate_size": get("visual_encoder.blocks.0.mlp.fc1.weight").shape[0],
                   "image_size": int(round(n_pos ** 0.5)) * patch, "patch_size": patch,
                   "layer_norm_eps": 1e-6, "hidden_act": "gelu"},
        "text": {"vocab_size": get("text_encoder.embeddings.word_embeddings.weight").shape[0],
                 "hidden_size": t_width, "num_hidden_layers": t_depth,
                 "num_attention_heads": max(1, t_width // 64),
                 "intermediate_size": get("text_encoder.encoder.layer.0.intermediate.dense.weight").shape[0],
                 "max_position_embeddings": get("text_encoder.embeddings.position_embeddings.weight").shape[0],
                 "encoder_hidden_size": get("text_encoder.encoder.layer.0.crossattention.self.key.weight").shape[1],
                 "layer_norm_eps": 1e-12, "hidden_act": "gelu"},
        "embed_dim": get("vision_proj.weight").shape[0],
        "max_length": 35,
    }
