"""Preference labels exported for reward-model and DPO training (Pick-a-Pic, HPD v2, HF).

Three label sources, each kept apart, named in every row and, when several are exported,
written to a split of its own (``train_reactions``, ``train_integrated``, ``train_ranking``):

``reactions``
    The AU-based labels of ``fergi annotate``: pairs above the model's abstention
    threshold (every pair with ``all_pairs``); the |score difference| is the confidence.
``integrated``
    The integrated score (eq. 10: the ImageReward / PickScore / HPS v2 ensemble plus the
    valence score), for pairs whose two images have the three scores.
``ranking``
    The participant's own ranking of the session's images: the study's ground truth.

Only images and labels leave the study: participant IDs become a salted hash (the salt
is kept in the study folder, never exported), face videos and AU traces are never
written (AU activation values only with ``with_features``), and participants who
withdrew are left out. Rows are written in shards as they are made, so the export of
millions of pairs never holds them all in memory, and the export is built in a
temporary sibling folder renamed into place at the end: a failed export leaves nothing.

The modules, low to high: ``_columns`` (formats, sources, columns), ``_privacy``
(pseudonyms, withdrawals), ``_study`` (what is read from a study folder), ``_labels``
(label chunks), ``_rows`` and ``_writers`` (one writer per format), ``_staging``,
``_summary`` and ``_card`` (what was written, the README), ``_export`` (the export).
The public names are re-exported here and, the main ones, from :mod:`fergi.preference`.
"""

from fergi.preference.export._card import dataset_card
from fergi.preference.export._columns import (
    ABSTENTIONS,
    FORMATS,
    LABEL_COLUMNS,
    PICKAPIC_COLUMNS,
    SOURCES,
    TIE_READERS,
)
from fergi.preference.export._export import export_labels, write_labels
from fergi.preference.export._labels import LabelPlan, decide, iter_labels
from fergi.preference.export._privacy import pseudonym, study_salt, withdrawn_participants
from fergi.preference.export._study import ImageStore, consent_status
from fergi.preference.export._summary import ExportSummary, tie_warning
from fergi.preference.export._writers import split_name

__all__ = [
    "ABSTENTIONS",
    "FORMATS",
    "LABEL_COLUMNS",
    "PICKAPIC_COLUMNS",
    "SOURCES",
    "TIE_READERS",
    "ExportSummary",
    "ImageStore",
    "LabelPlan",
    "consent_status",
    "dataset_card",
    "decide",
    "export_labels",
    "iter_labels",
    "pseudonym",
    "split_name",
    "study_salt",
    "tie_warning",
    "withdrawn_participants",
    "write_labels",
]
