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
``Linear12Valence``
    An L2 pairwise logistic model over the square roots of all 12 activation values.
``AnnotationModel``
    A valence model with its normalisation (``baseline_median``, ``quantile`` or
    ``none``), integration with the score ensemble, fallback and feature provenance:
    what ``fergi annotate`` and the study use. The shipped default is scale-free.

:func:`evaluate_lopo` evaluates an annotation model under strict leave-one-participant-out
with participant-bootstrap intervals; :func:`lopo_evaluate` runs LOPO on an image table;
:func:`export_labels` writes them as a training dataset (Pick-a-Pic parquet, HPD v2,
Hugging Face ``datasets``, JSON lines); :func:`reproduce_paper_tables` recomputes Tables 1 and 2 and the FAU-Net results exactly as
published (and the strict variant of Table 2); :func:`annotate_reactions` labels pairs of
unranked images from a study's reactions.
"""

from fergi.preference._annotation import (
    BASELINE_K_GRID,
    AnnotationModel,
    check_compatibility,
    check_features_have_aus,
    default_valence,
)
from fergi.preference._aucomb import AUcombValence, aucomb_scores
from fergi.preference._base import PreferenceModel, clone
from fergi.preference._bootstrap import bootstrap_ratio, bootstrap_selective, paired_difference
from fergi.preference._coverage import coverage_curve
from fergi.preference._data import load_reaction_data
from fergi.preference._ensemble import ENSEMBLE_COLUMNS, EnsembleScore, IntegratedScore
from fergi.preference._evaluation import evaluate_lopo, format_evaluation, participant_summary
from fergi.preference._faunet import FAUNet
from fergi.preference._grids import (
    ENSEMBLE_GRID,
    INTEGRATION_GRID,
    K_GRID,
    THRESHOLD_GRID,
    W_AU4_GRID,
)
from fergi.preference._io import (
    DEFAULT_MODEL,
    RAW_MODEL,
    annotate_pairs,
    annotate_reactions,
    default_model_path,
    load_model,
    save_model,
    write_jsonl,
)
from fergi.preference._linear import Linear12Valence
from fergi.preference._lopo import LOPOResult, lopo_evaluate
from fergi.preference._pairs import make_pairs
from fergi.preference._paper import (
    DISCREPANCY,
    attach_faunet,
    faunet_results,
    reproduce_paper_tables,
)
from fergi.preference._reaction_data import ReactionData, reaction_data_from_frames
from fergi.preference._report import format_paper_tables
from fergi.preference.export import (
    TIE_READERS,
    ExportSummary,
    export_labels,
    pseudonym,
    split_name,
    study_salt,
    tie_warning,
    withdrawn_participants,
)

__all__ = [
    "BASELINE_K_GRID",
    "DISCREPANCY",
    "ENSEMBLE_GRID",
    "INTEGRATION_GRID",
    "K_GRID",
    "RAW_MODEL",
    "DEFAULT_MODEL",
    "ENSEMBLE_COLUMNS",
    "TIE_READERS",
    "THRESHOLD_GRID",
    "W_AU4_GRID",
    "AUcombValence",
    "AnnotationModel",
    "EnsembleScore",
    "ExportSummary",
    "FAUNet",
    "IntegratedScore",
    "LOPOResult",
    "Linear12Valence",
    "PreferenceModel",
    "ReactionData",
    "annotate_pairs",
    "attach_faunet",
    "annotate_reactions",
    "aucomb_scores",
    "bootstrap_ratio",
    "bootstrap_selective",
    "check_compatibility",
    "check_features_have_aus",
    "clone",
    "coverage_curve",
    "default_model_path",
    "default_valence",
    "evaluate_lopo",
    "faunet_results",
    "export_labels",
    "format_evaluation",
    "format_paper_tables",
    "load_model",
    "load_reaction_data",
    "lopo_evaluate",
    "make_pairs",
    "paired_difference",
    "participant_summary",
    "pseudonym",
    "reaction_data_from_frames",
    "reproduce_paper_tables",
    "save_model",
    "split_name",
    "study_salt",
    "tie_warning",
    "withdrawn_participants",
    "write_jsonl",
]
