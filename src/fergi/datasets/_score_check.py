"""Which baseline-score columns of a release came from trained networks.

The authors' release has two columns whose networks were never given their weights
(their code at ShuangquanFeng/FERGI de2e7fe, which ``preprocess_image_data.py`` runs):

``Aesthetic_score``
    ``scores/AestheticScore.py`` of ShuangquanFeng/FERGI loads OpenAI's ViT-L/14 with
    ``clip.load`` and builds the LAION improved-aesthetic-predictor head ``MLP(768)``, but
    never loads the head's weights (``sac+logos+ava1-l14-linearMSE.pth``): the head keeps
    PyTorch's random initialisation. The module is never put in ``eval()`` either, so its
    dropout was active when ``preprocess_image_data.py`` scored the images.
``BLIP_score``
    ``scores/BLIPScore.py`` builds ``BLIP_Pretrain(vit='large')`` and never calls
    ``load_checkpoint`` (only the BERT tokenizer is loaded), so the whole ViT-L, the text
    encoder and both projections are random; also never put in ``eval()``.

Their Table 1 figures, 51.39 and 49.78 %, are chance. A study scored by ``fergi score``
has trained columns (fergi's scorers refuse to run without their weights), so the flag is
decided from the values, not assumed: the LAION head regresses 1-10 ratings and gives
about 4-7 on generated images, and BLIP's contrastive head scores an image against its own
prompt well above 0, while the untrained networks give values near 0 that track neither
the ratings nor any trained score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fergi.schema import SCORE_COLUMNS

#: Columns whose scorer produced untrained output in the authors' release, with why.
UNTRAINED_IN_RELEASE: dict[str, str] = {
    "Aesthetic_score": (
        "the authors' scores/AestheticScore.py builds the LAION aesthetic head MLP(768) on "
        "CLIP ViT-L/14 but never loads its weights (sac+logos+ava1-l14-linearMSE.pth), nor "
        "calls eval(): a randomly initialised head with dropout on"),
    "BLIP_score": (
        "the authors' scores/BLIPScore.py builds BLIP_Pretrain(vit='large') but never calls "
        "load_checkpoint (only the tokenizer is loaded), nor eval(): random ViT, text encoder "
        "and projections"),
}

# What a trained network gives, and the test that tells the two apart (module docstring).
_EXPECTED = {
    "Aesthetic_score": ("mean between 1 and 10 (the LAION head regresses 1-10 ratings; "
                        "about 4-7 on generated images)", lambda mean: not 1.0 <= mean <= 10.0),
    "BLIP_score": ("mean above 0.1 (a trained contrastive head scores an image against its "
                   "own prompt well above 0)", lambda mean: mean < 0.1),
}
_TRAINED_REFERENCES = ("CLIP_score", "ImageReward_score", "PickScore", "HPS_V2_score")


def _spearman(a: pd.Series, b: pd.Series) -> float | None:
    both = pd.concat([a, b], axis=1).apply(pd.to_numeric, errors="coerce").dropna()
    if len(both) < 3 or both.iloc[:, 0].nunique() < 2 or both.iloc[:, 1].nunique() < 2:
        return None
    ranks = both.rank()
    return round(float(np.corrcoef(ranks.iloc[:, 0], ranks.iloc[:, 1])[0, 1]), 4)


def untrained_columns(table: pd.DataFrame, columns) -> list[str]:
    """Those of ``columns`` whose values in ``table`` are untrained output (module docstring).

    Only the scale test of :func:`check_score_columns`, cheap enough for every fit.
    """
    out = []
    for column in columns:
        if column in _EXPECTED and column in table.columns:
            values = pd.to_numeric(table[column], errors="coerce").dropna()
            if len(values) and _EXPECTED[column][1](float(values.mean())):
                out.append(column)
    return out


def check_score_columns(images: pd.DataFrame) -> dict:
    """Summary of every baseline-score column, flagging those that are untrained output.

    Parameters
    ----------
    images : DataFrame
        The image table (:func:`load_images`), with the columns of :data:`SCORE_COLUMNS`
        (missing ones are reported with ``n`` = 0).

    Returns
    -------
    dict
        Column -> ``{"untrained_in_release": bool, "reason": str or None, "n", "mean", "sd",
        "min", "max", "expected": str or None, "spearman": {other column: rho}}``.
        ``untrained_in_release`` is true only for ``Aesthetic_score`` and ``BLIP_score``
        when their values are off the scale their trained network gives (module
        docstring); ``spearman`` holds the rank correlations with the overall rating and
        the trained scores, the evidence that an untrained column tracks nothing.
    """
    out = {}
    for column in SCORE_COLUMNS:
        values = (pd.to_numeric(images[column], errors="coerce") if column in images.columns
                  else pd.Series(dtype=float)).dropna()
        entry: dict = {"untrained_in_release": False, "reason": None, "n": int(len(values)),
                       "mean": None, "sd": None, "min": None, "max": None, "expected": None,
                       "spearman": {}}
        if len(values):
            entry.update(mean=round(float(values.mean()), 6),
                         sd=round(float(values.std(ddof=1)), 6) if len(values) > 1 else None,
                         min=round(float(values.min()), 6), max=round(float(values.max()), 6))
            for other in ("overall_rating", *_TRAINED_REFERENCES):
                if other != column and other in images.columns:
                    entry["spearman"][other] = _spearman(images[column], images[other])
        if column in _EXPECTED:
            expected, off_scale = _EXPECTED[column]
            entry["expected"] = expected
            if entry["mean"] is not None and off_scale(entry["mean"]):
                entry["untrained_in_release"] = True
                entry["reason"] = UNTRAINED_IN_RELEASE[column]
        out[column] = entry
    return out
