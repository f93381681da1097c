"""One registry of baseline scorers: each one's weights, preprocessing and release column."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fergi._errors import FergiError
from fergi._registry import Registry
from fergi.scorers import _clip
from fergi.scorers._blip import BLIPScorer, load_bert_tokenizer, load_blip
from fergi.scorers._clip import (
    CLIPFamilyScorer,
    load_aesthetic_head,
    load_clip_model,
    load_clip_tokenizer,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScorerSpec:
    """What fergi knows about a scorer.

    Attributes
    ----------
    name : str
        Registry name, as given to ``--scorers``.
    column : str
        Its column in the release's ``preprocessed_image_data`` tables.
    factory : callable
        ``factory(weights, device=, batch_size=, **options)`` returns the scorer.
    weights : str
        Which weights it needs and how to get them, in words (used in errors).
    preprocessing : str
        The image and text preparation, in words.
    output : str
        What the number is.
    reference : str
        The implementation whose number fergi reproduces.
    hf_sources : tuple
        ``(repo_id, filename or None)`` looked up in the Hugging Face cache (never
        downloaded) when no weights are given; ``None`` means the whole snapshot.
    local_names : tuple
        File names also looked for in ``$FERGI_SCORERS_DIR`` (default
        ``~/.cache/fergi/scorers``) and the reference libraries' own caches.
    local_dirs : tuple
        Those caches.
    in_release : bool
        Whether the public release has its column (the six of the paper); ``fergi
        score`` runs these by default.
    """

    name: str
    column: str
    factory: Callable
    weights: str
    preprocessing: str
    output: str
    reference: str
    hf_sources: tuple = ()
    local_names: tuple = ()
    local_dirs: tuple = field(default=())
    in_release: bool = True


_REGISTRY: Registry[ScorerSpec] = Registry("scorer", "--scorers")


def register_scorer(spec: ScorerSpec) -> None:
    """Add (or replace) a scorer in the registry."""
    _REGISTRY.register(spec)


def list_scorers(*, release: bool = False) -> list[str]:
    """Names accepted by :func:`create_scorer`: the release's six in its column order, then the others.

    ``release=True``: only the scorers whose column the public release has (what
    ``fergi score`` runs by default).
    """
    return [n for n in _REGISTRY.names() if not release or _REGISTRY.get(n).in_release]


def get_scorer_spec(name: str) -> ScorerSpec:
    """The registry entry of ``name``.

    Raises
    ------
    fergi.FergiError
        Unknown name.
    """
    return _REGISTRY.get(name)


def scorers_dir() -> Path:
    """Where fergi looks for scorer weights by file name: ``$FERGI_SCORERS_DIR`` or ``~/.cache/fergi/scorers``."""
    return Path(os.environ.get("FERGI_SCORERS_DIR") or Path.home() / ".cache" / "fergi" / "scorers")


def _hf_cached(repo_id: str, filename: str | None) -> Path | None:
    """A file (or snapshot folder) of ``repo_id`` in the Hugging Face cache, without network."""
    try:
        import huggingface_hub as hub
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        if filename is None:
            return Path(hub.snapshot_download(repo_id, local_files_only=True))
        got = hub.try_to_load_from_cache(repo_id, filename)
        return Path(got) if isinstance(got, str) else None
    except Exception:  # not cached (LocalEntryNotFoundError and kin)
        return None


def find_weights(spec: ScorerSpec, weights=None) -> Path:
    """The weights of ``spec``: ``weights`` if given, else the first cached candidate.

    Raises
    ------
    fergi.FergiError
        Nothing found: the message names the file and how to get it.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise FergiError(f"{path}: {spec.name} weights not found ({spec.weights})")
        return path
    for repo, filename in spec.hf_sources:
        got = _hf_cached(repo, filename)
        if got is not None:
            return got
    for folder in (scorers_dir(), *(Path(d).expanduser() for d in spec.local_dirs)):
        for name in spec.local_names:
            if (folder / name).exists():
                return folder / name
    raise FergiError(f"{spec.name}: no weights found in the Hugging Face cache or {scorers_dir()}; "
                     f"{spec.weights}")


def fingerprint(*paths) -> str:
    """A content hash of weight files or folders (memoised by path, size and mtime).

    Multi-gigabyte checkpoints take seconds to hash, so each file's digest is kept in
    ``fingerprints.json`` beside the score cache and reused while the file is unchanged.
    """
    memo_path = scorers_dir() / "fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
            digest = memo.get(key)
            if digest is None:
                fh = hashlib.sha256()
                with open(f, "rb") as stream:
                    for chunk in iter(lambda s=stream: s.read(1 << 22), b""):
                        fh.update(chunk)
                digest = memo[key] = fh.hexdigest()
                changed = True
            h.update(f.name.encode() if p.is_dir() else b"")
            h.update(digest.encode())
    if changed:
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(memo))
            tmp.replace(memo_path)
        except OSError:  # a read-only home: hashing again next time is only slower
            logger.debug("cannot write %s", memo_path)
    return h.hexdigest()[:16]


def create_scorer(name: str, *, weights=None, device=None, batch_size: int = 16, precision: str = "fp32",
                  **options):
    """Create a baseline scorer by name (open_clip-style factory).

    Parameters
    ----------
    name : {"clip", "aesthetic", "blip", "imagereward", "pickscore", "hpsv2", "hpsv2.1"}
        See :func:`list_scorers` and each entry's ``spec`` for its reference. ``hpsv2``
        is HPS v2.0 (the paper's, the release's and hpsv2's default); ``hpsv2.1`` is
        the later v2.1 model, with its own column ``HPS_V2.1_score``.
    weights : path, optional
        Checkpoint file or transformers folder. Default: the Hugging Face cache, then
        ``$FERGI_SCORERS_DIR``; nothing is ever downloaded.
    device : str or torch.device, optional
        Default CUDA when available, else CPU.
    batch_size : int
        Images per forward pass.
    precision : {"fp32", "fp16"}
        The model's dtype, fp32 on every device by default (as ImageReward, BLIP score
        and PickScore run); part of the score cache key.
    **options
        ``tokenizer`` (folder of the tokenizer files), ``config`` (architecture
        override, e.g. a tiny one for tests), ``num_workers`` (decoding threads);
        ``aesthetic`` also takes ``backbone`` (its CLIP ViT-L/14 weights); ``hpsv2``
        and ``hpsv2.1`` take ``antialias`` (default True: torchvision >= 0.17's
        tensor resize; False: torchvision <= 0.16's).

    Returns
    -------
    Scorer
        With ``score(images, prompts) -> numpy.ndarray``; ``scorer.spec`` is its
        registry entry and ``scorer.fingerprint`` identifies its weights.

    Raises
    ------
    fergi.FergiError
        Unknown name, missing or unreadable weights.
    """
    spec = get_scorer_spec(name)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise FergiError(f"scorer {name!r} needs {exc.name}: pip install 'fergi[scorers]'") from None
    if name in _CLEANED_TEXT:
        try:
            import ftfy  # noqa: F401
        except ImportError:
            raise FergiError(f"scorer {name!r} needs ftfy (its reference cleans prompts with it): "
                             "pip install 'fergi[scorers]'") from None
    scorer = spec.factory(spec, weights, device=device, batch_size=batch_size, precision=precision,
                          **options)
    scorer.spec = spec
    scorer.name = spec.name
    return scorer


# -- factories ----------------------------------------------------------------------

#: Scorers whose reference tokenizer cleans prompts with ftfy (OpenAI CLIP, OpenCLIP).
_CLEANED_TEXT = {"clip", "hpsv2", "hpsv2.1"}

_CLIP_TOKENIZER_SOURCES = (("openai/clip-vit-large-patch14", None),
                           ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", None))


def _tokenizer_dir(name: str, tokenizer, weights: Path, sources=_CLIP_TOKENIZER_SOURCES) -> Path:
    if tokenizer is not None:
        return Path(tokenizer).expanduser()
    if weights.is_dir() and (weights / "vocab.json").is_file():
        return weights
    for repo, _ in sources:
        got = _hf_cached(repo, "vocab.json")
        if got is not None and (got.parent / "merges.txt").is_file():
            return got.parent
    raise FergiError(f"{name}: no CLIP tokenizer (vocab.json, merges.txt) in the Hugging Face cache; "
                     "get it with `huggingface-cli download openai/clip-vit-large-patch14 vocab.json "
                     "merges.txt` or pass tokenizer=DIR")


def _make_clip_family(kind, arch, mode):
    def factory(spec, weights, *, config=None, tokenizer=None, backbone=None, **options):
        head = head_path = None
        if kind == "aesthetic":
            head_path = find_weights(spec, weights)
            clip_spec = get_scorer_spec("clip")
            weights = find_weights(clip_spec, backbone)
        else:
            weights = find_weights(spec, weights)
            _check_hps_version(spec.name, weights)
        model = load_clip_model(weights, config or arch, spec.name)
        if kind == "aesthetic":
            head = load_aesthetic_head(head_path, model.config.projection_dim)
        tok_dir = _tokenizer_dir(spec.name, tokenizer, weights)
        scorer = CLIPFamilyScorer(model, load_clip_tokenizer(tok_dir), kind, head=head,
                                  preprocess_mode=mode, clean_text=kind != "logit", **options)
        scorer.weights_fingerprint = fingerprint(weights, head_path, tok_dir / "vocab.json",
                                                 tok_dir / "merges.txt")
        return scorer

    return factory


def _check_hps_version(name: str, weights: Path) -> None:
    """Refuse the other HPS version's official file, so one never stands in for the other.

    The two checkpoints have the same architecture, so only the file name tells them
    apart; files under other names are taken as given.
    """
    other = {"hpsv2": ("HPS_v2.1", "hpsv2.1"), "hpsv2.1": ("HPS_v2_", "hpsv2")}.get(name)
    if other and weights.name.startswith(other[0]):
        raise FergiError(f"{weights}: this is the {other[1]} checkpoint, not {name}'s; "
                         f"use --scorers {other[1]} (column {get_scorer_spec(other[1]).column})")


_BERT_SOURCES = (("google-bert/bert-base-uncased", None), ("bert-base-uncased", None))


def _bert_tokenizer_dir(name: str, tokenizer, weights: Path) -> Path:
    if tokenizer is not None:
        return Path(tokenizer).expanduser()
    for folder in (weights if weights.is_dir() else weights.parent, scorers_dir() / "bert-base-uncased"):
        if (folder / "vocab.txt").is_file():
            return folder
    for repo, _ in _BERT_SOURCES:
        got = _hf_cached(repo, "vocab.txt")
        if got is not None:
            return got.parent
    raise FergiError(f"{name}: no BERT tokenizer (vocab.txt of bert-base-uncased) in the Hugging Face "
                     "cache; get it with `huggingface-cli download google-bert/bert-base-uncased "
                     "vocab.txt` or pass tokenizer=DIR")


def _make_blip(kind):
    def factory(spec, weights, *, config=None, tokenizer=None, **options):
        weights = find_weights(spec, weights)
        model = load_blip(weights, config, spec.name, with_head=kind == "imagereward")
        tok_dir = _bert_tokenizer_dir(spec.name, tokenizer, weights)
        scorer = BLIPScorer(model, load_bert_tokenizer(tok_dir), kind, **options)
        scorer.weights_fingerprint = fingerprint(weights, tok_dir / "vocab.txt")
        return scorer

    return factory


def _register_all():
    register_scorer(ScorerSpec(
        name="clip", column="CLIP_score",
        factory=_make_clip_family("cosine", _clip.VIT_L_14, "crop"),
        weights="OpenAI CLIP ViT-L/14: the Hugging Face snapshot openai/clip-vit-large-patch14 "
                "(`huggingface-cli download openai/clip-vit-large-patch14`) or OpenAI's ViT-L-14.pt",
        preprocessing="bicubic resize (PIL) of the shorter side to 224, centre crop 224, then RGB, "
                      "CLIP mean/std; prompt: ftfy, HTML unescaped twice, whitespace collapsed, "
                      "lower case (OpenAI CLIP's tokenizer), CLIP BPE, 77 tokens, truncated",
        output="cosine similarity of the normalised image and text embeddings",
        reference="ImageReward benchmark's CLIPScore (openai/CLIP, ViT-L/14)",
        hf_sources=(("openai/clip-vit-large-patch14", None),),
        local_names=("ViT-L-14.pt",), local_dirs=("~/.cache/clip", "~/.cache/ImageReward")))
    register_scorer(ScorerSpec(
        name="aesthetic", column="Aesthetic_score",
        factory=_make_clip_family("aesthetic", _clip.VIT_L_14, "crop"),
        weights="the LAION improved aesthetic predictor head sac+logos+ava1-l14-linearMSE.pth "
                "(github.com/christophschuhmann/improved-aesthetic-predictor) in "
                "$FERGI_SCORERS_DIR, plus the clip scorer's ViT-L/14 weights",
        preprocessing="as clip (image only)",
        output="MLP(768-1024-128-64-16-1, no activations) of the L2-normalised ViT-L/14 "
               "image embedding",
        reference="ImageReward benchmark's AestheticScore (improved-aesthetic-predictor)",
        local_names=("sac+logos+ava1-l14-linearMSE.pth",),
        local_dirs=("~/.cache/ImageReward",)))
    register_scorer(ScorerSpec(
        name="blip", column="BLIP_score", factory=_make_blip("itc"),
        weights="BLIP ViT-L model_large.pth (storage.googleapis.com/sfr-vision-language-research/"
                "BLIP/models/model_large.pth) in $FERGI_SCORERS_DIR or ~/.cache/ImageReward, plus "
                "bert-base-uncased's vocab.txt",
        preprocessing="bicubic shorter side to 224, centre crop 224, then RGB, CLIP mean/std; "
                      "prompt: BERT uncased WordPiece (no ftfy: BLIP's BertTokenizer does not use "
                      "it), padded and truncated to 35 tokens",
        output="cosine similarity of vision_proj(image [CLS]) and text_proj(text [CLS]), the "
               "text encoded alone (BLIP's image-text contrastive head)",
        reference="ImageReward benchmark's BLIPScore (salesforce/BLIP, ViT-L)",
        local_names=("model_large.pth",), local_dirs=("~/.cache/ImageReward",)))
    register_scorer(ScorerSpec(
        name="imagereward", column="ImageReward_score", factory=_make_blip("imagereward"),
        weights="ImageReward.pt from the Hugging Face repo THUDM/ImageReward, plus "
                "bert-base-uncased's vocab.txt",
        preprocessing="as blip",
        output="MLP(768-1024-128-64-16-1) of the text [CLS] encoded with cross-attention to the "
               "image, standardised: (r - 0.16717) / 1.03334",
        reference="ImageReward v1.0 (THUDM/ImageReward ImageReward.score)",
        hf_sources=(("THUDM/ImageReward", "ImageReward.pt"),),
        local_names=("ImageReward.pt",), local_dirs=("~/.cache/ImageReward",)))
    register_scorer(ScorerSpec(
        name="pickscore", column="PickScore",
        factory=_make_clip_family("logit", _clip.VIT_H_14, "crop-hf"),
        weights="the Hugging Face snapshot yuvalkirstain/PickScore_v1 and the tokenizer of "
                "laion/CLIP-ViT-H-14-laion2B-s32B-b79K (`huggingface-cli download ...`)",
        preprocessing="Hugging Face CLIP image processor (PIL): RGB, bicubic shorter side to "
                      "224, centre crop (floor offset), CLIP mean/std; prompt: transformers' CLIP "
                      "tokenizer as AutoProcessor loads it (NFC, whitespace collapsed, lower case; "
                      "no ftfy, no HTML unescaping), 77 tokens, truncated",
        output="exp(logit_scale) x cosine similarity (about 100 x cosine)",
        reference="PickScore v1 (yuvalkirstain/PickScore, transformers CLIPModel)",
        hf_sources=(("yuvalkirstain/PickScore_v1", None),)))
    hps = dict(
        factory=_make_clip_family("cosine", _clip.VIT_H_14, "pad"),
        preprocessing="hpsv2's OpenCLIP val transform: RGB to float, bicubic resize of the float "
                      "tensor so the longer side is 224 (antialiased, as torchvision >= 0.17), "
                      "zero padding to 224x224, CLIP mean/std; prompt: ftfy, HTML unescaped twice, "
                      "whitespace collapsed, lower case (OpenCLIP tokenizer), 77 tokens, truncated",
        output="cosine similarity of the normalised image and text embeddings",
        local_dirs=("~/.cache/hpsv2",))
    register_scorer(ScorerSpec(
        name="hpsv2", column="HPS_V2_score",
        weights="HPS_v2_compressed.pt (HPS v2.0) from the Hugging Face repo xswu/HPSv2 "
                "(`huggingface-cli download xswu/HPSv2 HPS_v2_compressed.pt`), plus a CLIP BPE "
                "tokenizer (any of the above); v2.1 is the separate scorer hpsv2.1",
        reference="HPS v2.0 (tgxs002/HPSv2 hpsv2.score with its default hps_version='v2.0', "
                  "OpenCLIP ViT-H/14): the paper's and the release's",
        hf_sources=(("xswu/HPSv2", "HPS_v2_compressed.pt"),),
        local_names=("HPS_v2_compressed.pt",), **hps))
    register_scorer(ScorerSpec(
        name="hpsv2.1", column="HPS_V2.1_score", in_release=False,
        weights="HPS_v2.1_compressed.pt from the Hugging Face repo xswu/HPSv2 "
                "(`huggingface-cli download xswu/HPSv2 HPS_v2.1_compressed.pt`), plus a CLIP BPE "
                "tokenizer (any of the above)",
        reference="HPS v2.1 (tgxs002/HPSv2 hpsv2.score(..., hps_version='v2.1'), OpenCLIP ViT-H/14); "
                  "not in the paper or the release",
        hf_sources=(("xswu/HPSv2", "HPS_v2.1_compressed.pt"),),
        local_names=("HPS_v2.1_compressed.pt",), **hps))


_register_all()
