"""Baseline preference scorers: CLIP, Aesthetic, BLIP, ImageReward, PickScore and HPS v2.

The six pre-trained scorers the FERGI paper compares reactions with (Sec. 6.2, Tables
1-2) and integrates with them (eq. 10), each reproducing its reference's number, plus
HPS v2.1 (``hpsv2.1``, its own column; ``hpsv2`` is always v2.0, the paper's):

>>> from fergi.scorers import create_scorer
>>> scorer = create_scorer("pickscore")                       # doctest: +SKIP
>>> scorer.score(["a.png", "b.png"], ["a red fox", "a red fox"])  # doctest: +SKIP

Weights are read from a path or the Hugging Face cache and never downloaded. The
heavy dependencies come with ``pip install 'fergi[scorers]'``. Scoring a whole
folder (``fergi score``), here or on Ray, is :func:`fergi.batch.score_folder`.
"""

from fergi.scorers._base import Scorer
from fergi.scorers._cache import ScoreCache
from fergi.scorers._registry import (
    ScorerSpec,
    create_scorer,
    find_weights,
    get_scorer_spec,
    list_scorers,
    register_scorer,
    scorers_dir,
)

__all__ = ["ScoreCache", "Scorer", "ScorerSpec", "create_scorer", "find_weights",
           "get_scorer_spec", "list_scorers", "register_scorer", "scorers_dir"]
