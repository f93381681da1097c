"""Pairwise preference annotation from facial reactions (paper Sec. 6.2).

Models follow scikit-learn conventions (plain ``__init__``, ``fit(table, y=None, *,
groups=None)`` returning ``self``, learned attributes ending in ``_``) and work on the
image table of :func:`fergi.features.image_table`:

``AUcombValence``
    The AUcomb valence score (eqs. 3-6) with abstention, grid-searched on
    ``n_correct - 2 n_incorrect`` (eq. 9).
``EnsembleScore``
    z-scored ImageReward / PickScore / HPS v2 ensemble (eqs. 7-8).
``IntegratedScore``
    ``s_m + a * s_AU`` (eq. 10).
``FAUNet``
    The authors' later neural model over all 12 AUs.

:func:`lopo_evaluate` runs leave-one-participant-out evaluation of any of them;
:func:`reproduce_paper_tables` recomputes Tables 1 and 2 and the FAU-Net results exactly as
published; :func:`annotate_pairs` labels pairs of unranked images.
"""

from fergi.preference._aucomb import AUcombValence, aucomb_scores
from fergi.preference._base import PreferenceModel, clone
from fergi.preference._coverage import coverage_curve
from fergi.preference._ensemble import EnsembleScore, IntegratedScore
from fergi.preference._faunet import FAUNet
from fergi.preference._grids import (
    ENSEMBLE_GRID,
    INTEGRATION_GRID,
    K_GRID,
    THRESHOLD_GRID,
    W_AU4_GRID,
)
from fergi.preference._io import (
    annotate_pairs,
    default_model_path,
    load_model,
    save_model,
    write_jsonl,
)
from fergi.preference._lopo import LOPOResult, lopo_evaluate
from fergi.preference._pairs import make_pairs
from fergi.preference._paper import DISCREPANCY, reproduce_paper_tables
from fergi.preference._report import format_paper_tables

__all__ = [
    "DISCREPANCY",
    "ENSEMBLE_GRID",
    "INTEGRATION_GRID",
    "K_GRID",
    "THRESHOLD_GRID",
    "W_AU4_GRID",
    "AUcombValence",
    "EnsembleScore",
    "FAUNet",
    "IntegratedScore",
    "LOPOResult",
    "PreferenceModel",
    "annotate_pairs",
    "aucomb_scores",
    "clone",
    "coverage_curve",
    "default_model_path",
    "format_paper_tables",
    "load_model",
    "lopo_evaluate",
    "make_pairs",
    "reproduce_paper_tables",
    "save_model",
    "write_jsonl",
]
