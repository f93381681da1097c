"""CLIP-family scorers (CLIP score, LAION aesthetic, PickScore, HPS v2) on transformers' CLIP.

OpenAI CLIP checkpoints (``ViT-L-14.pt``) and OpenCLIP checkpoints (HPS v2) share one
state-dict layout; :func:`openclip_to_hf` renames it to transformers' ``CLIPModel``,
which computes the same network (pre-LayerNorm ViT and causal text transformer,
class-token / end-of-text pooling, linear projections). PickScore is published in
transformers' format and loads as is.
"""

from __future__ import annotations

import html
import logging
import re
import warnings
import zipfile
from pathlib import Path

from fergi._errors import FergiError
from fergi.scorers._base import Scorer

logger = logging.getLogger(__name__)

# OpenAI's whitespace_clean uses the regex module's \s (Unicode White_Space). re's \s also
# matches U+001C-U+001F, which ftfy.fix_text has already removed as control characters.
_WHITESPACE = re.compile(r"\s+")

#: OpenAI CLIP ViT-L/14 (CLIP score, aesthetic backbone): QuickGELU activations.
VIT_L_14 = {
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                    "hidden_act": "quick_gelu", "bos_token_id": 49406, "eos_token_id": 49407,
                    "pad_token_id": 49407},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
                      "hidden_act": "quick_gelu"},
}
#: OpenCLIP ViT-H/14 (HPS v2, PickScore): exact GELU.
VIT_H_14 = {
    "projection_dim": 1024,
    "text_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "max_position_embeddings": 77, "vocab_size": 49408,
                    "hidden_act": "gelu", "bos_token_id": 49406, "eos_token_id": 49407,
                    "pad_token_id": 49407},
    "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
                      "hidden_act": "gelu"},
}

_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP = {"visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale"}
# Buffers and metadata of the OpenAI / OpenCLIP files that carry no weights.
_IGNORED = {"attn_mask", "input_resolution", "context_length", "vocab_size"}


def openclip_to_hf(state_dict: dict) -> dict:
    """Rename an OpenAI CLIP / OpenCLIP state dict to transformers ``CLIPModel`` keys.

    ``in_proj_weight`` (q, k, v stacked) is split into ``q_proj``/``k_proj``/``v_proj``;
    the ``visual.proj`` and ``text_projection`` matrices (``x @ P``) become the
    transposed weights of bias-free linear layers.

    Raises
    ------
    KeyError
        A key this layout does not have (the file is some other model).
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key in _IGNORED or key.endswith(".attn_mask"):
            continue
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif ".resblocks." in key:
            tower, rest = key.split(".resblocks.", 1)
            prefix = {"visual.transformer": "vision_model", "transformer": "text_model"}[tower]
            layer, name = rest.split(".", 1)
            base = f"{prefix}.encoder.layers.{layer}."
            if name.startswith("attn.in_proj_"):
                kind = name.rsplit("_", 1)[1]  # weight / bias
                for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
            else:
                stem, kind = name.rsplit(".", 1)
                out[f"{base}{_BLOCK[stem]}.{kind}"] = value
        else:
            raise KeyError(key)
    return out


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def read_state_dict(path: Path) -> dict:
    """Tensors of a checkpoint file: safetensors, a ``torch.save`` dict or a TorchScript archive.

    A ``{"state_dict": ...}`` wrapper (HPS v2) or ``{"model": ...}`` (BLIP) is unwrapped.
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if _is_torchscript(path):
            # OpenAI's ViT-L-14.pt is a TorchScript archive: only its tensors are used.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FergiError:
        raise
    except Exception as exc:
        raise FergiError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise FergiError(f"{path}: not a state dict (found {type(obj).__name__})")
    return dict(obj)


def load_clip_model(weights: Path, config: dict | None, what: str):
    """A transformers ``CLIPModel`` from an HF directory or an OpenAI/OpenCLIP file.

    Parameters
    ----------
    weights : Path
        A directory written by ``save_pretrained`` (``config.json`` plus weights), or a
        checkpoint file in OpenAI / OpenCLIP layout.
    config : dict
        The architecture (``CLIPConfig`` keyword arguments) a checkpoint file fills.
    what : str
        Architecture name for error messages.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    weights = Path(weights)
    if weights.is_dir():
        from transformers.utils import logging as hf_logging

        # transformers' own bar would interleave with fergi's progress bar and errors.
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = CLIPModel.from_pretrained(str(weights), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise FergiError(f"{weights}: not a transformers CLIP model directory ({exc})") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        return model.float().eval()
    state = read_state_dict(weights)
    try:
        converted = openclip_to_hf(state)
    except KeyError as key:
        raise FergiError(f"{weights}: unexpected weight {key} for a {what} CLIP checkpoint") from None
    cfg = CLIPConfig(**config)
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = CLIPModel(cfg)
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise FergiError(f"{weights}: weights do not fit the {what} architecture ({first})") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise FergiError(f"{weights}: not a complete {what} CLIP checkpoint "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:  # position_ids: rebuilt, not stored in the checkpoints
            module_name, _, buf_name = name.rpartition(".")
            module = model.get_submodule(module_name)
            module.register_buffer(buf_name, torch.arange(buf.shape[-1]).expand(buf.shape),
                                   persistent=False)
    return model.float().eval()


def load_clip_tokenizer(path: Path):
    """transformers' CLIP BPE tokenizer from a folder holding ``vocab.json`` and ``merges.txt``."""
    from transformers import CLIPTokenizer

    path = Path(path)
    if not (path / "vocab.json").is_file() or not (path / "merges.txt").is_file():
        raise FergiError(f"{path}: no CLIP tokenizer here (needs vocab.json and merges.txt)")
    try:
        return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FergiError(f"{path}: cannot load the CLIP tokenizer ({exc})") from None


def openclip_clean(text: str) -> str:
    """OpenAI CLIP's and OpenCLIP's text cleaning before BPE, as their tokenizers do it.

    ``whitespace_clean(basic_clean(text)).lower()`` of ``simple_tokenizer.py`` (openai/CLIP,
    and the OpenCLIP copy inside hpsv2 that scores HPS v2): ``ftfy.fix_text`` (curly
    quotes to straight ones, ligatures such as "ﬁ" to "fi", full-width letters to ASCII,
    mojibake repaired, NFC), HTML entities unescaped twice (``&amp;amp;`` is ``&``),
    whitespace runs collapsed to one space, stripped, lower-cased.

    transformers' CLIP tokenizer (5.x, the former fast tokenizer) only applies NFC,
    the whitespace collapse and lower-casing itself, so the CLIP score and HPS v2
    prompts are cleaned here first; PickScore's reference tokenises with that
    transformers tokenizer (``AutoProcessor``) and gets no cleaning.
    """
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class CLIPFamilyScorer(Scorer):
    """Scores from a CLIP model's normalised image and text embeddings.

    ``kind``: ``"cosine"`` (CLIP score, HPS v2), ``"logit"`` (PickScore:
    ``exp(logit_scale) * cosine``) or ``"aesthetic"`` (an MLP on the normalised image
    embedding; the prompt is unused).
    """

    def __init__(self, model, tokenizer, kind: str, *, head=None, preprocess_mode="crop",
                 clean_text: bool = True, antialias: bool = True, **options):
        super().__init__(**options)
        self.kind = kind
        self.antialias = bool(antialias)
        # OpenAI/OpenCLIP tokenizers clean with ftfy and unescape HTML (CLIP, HPS v2);
        # PickScore's reference tokenises with transformers, which does neither.
        self.clean_text = clean_text
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        # The aesthetic MLP runs in float32: the reference casts embeddings to float first.
        self.head = head.to(self.device).float().eval() if head is not None else None
        self.image_size = int(model.config.vision_config.image_size)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.preprocess_mode = preprocess_mode

    def _image_features(self, pixels):
        import torch.nn.functional as F

        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def tokenize(self, prompts: list[str]):
        """Token ids and attention mask of ``prompts`` as the model sees them (cleaned, padded, truncated)."""
        if self.clean_text:
            prompts = [openclip_clean(p) for p in prompts]
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=self.context_length, return_tensors="pt")
        return tokens["input_ids"], tokens["attention_mask"]

    def _text_features(self, prompts: list[str]):
        import torch.nn.functional as F

        ids, mask = (t.to(self.device) for t in self.tokenize(prompts))
        pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def _score_batch(self, pixels, prompts):
        image = self._image_features(pixels)
        if self.kind == "aesthetic":
            return self.head(image).reshape(-1)
        # Five images usually share one prompt: encode each distinct prompt once.
        unique = list(dict.fromkeys(prompts))
        text = self._text_features(unique)[[unique.index(p) for p in prompts]]
        cosine = (image * text).sum(dim=-1)
        if self.kind == "logit":
            return self.model.logit_scale.float().exp() * cosine
        return cosine


def aesthetic_mlp(embed_dim: int = 768):
    """The LAION improved aesthetic predictor's head (no activations, as published).

    ``Linear(d, 1024) -> Dropout -> Linear(1024, 128) -> Dropout -> Linear(128, 64)
    -> Dropout -> Linear(64, 16) -> Linear(16, 1)``; checkpoint keys ``layers.{0,2,4,6,7}``.
    """
    from torch import nn

    class AestheticMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(embed_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    return AestheticMLP()


def load_aesthetic_head(path: Path, embed_dim: int):
    """The aesthetic MLP with the weights of ``path`` (``sac+logos+ava1-l14-linearMSE.pth``)."""
    head = aesthetic_mlp(embed_dim)
    state = read_state_dict(path)
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        line = str(exc).splitlines()[0]
        raise FergiError(f"{path}: not an aesthetic-predictor MLP for {embed_dim}-d embeddings ({line})") from None
    return head
