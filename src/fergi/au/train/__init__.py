"""Training the FERGI ``ir50`` AU model on DISFA and DISFA+ (paper Supp. B).

* :class:`DisfaReader`, :class:`DisfaPlusReader`, :func:`read_datasets`: the datasets
  as distributed, into one frame table.
* :func:`build_cache`, :class:`FaceCache`: every labelled frame preprocessed once into
  a memory-mapped 112x112 uint8 array.
* :func:`class_counts`, :func:`mse_weights`, :func:`bce_weights`, :func:`au_loss`: the
  loss of eqs. 11-17, as the authors' code computes it.
* :func:`train_model`, :func:`save_model`, :func:`read_training_record`: training, and
  the record of how a model was trained that its file carries.
"""

from fergi.au.train._cache import FaceCache, build_cache
from fergi.au.train._config import TrainConfig
from fergi.au.train._datasets import (
    DISFA_AUS,
    TABLE_COLUMNS,
    DisfaPlusReader,
    DisfaReader,
    read_datasets,
    subject_groups,
)
from fergi.au.train._loss import (
    MSE_WEIGHTS,
    au_loss,
    bce_weights,
    class_counts,
    expand_weights,
    mse_weights,
)
from fergi.au.train._metrics import au_metrics, format_metrics, icc31
from fergi.au.train._model_file import make_model, predict, read_training_record, save_model
from fergi.au.train._run import plot_learning_curve, train_au
from fergi.au.train._synthetic import write_synthetic_datasets
from fergi.au.train._train import augment, cross_validate, subject_folds, train_model

__all__ = [
    "TrainConfig",
    "au_metrics",
    "augment",
    "cross_validate",
    "format_metrics",
    "icc31",
    "make_model",
    "plot_learning_curve",
    "predict",
    "read_training_record",
    "save_model",
    "subject_folds",
    "train_au",
    "train_model",
    "DISFA_AUS",
    "TABLE_COLUMNS",
    "DisfaPlusReader",
    "DisfaReader",
    "FaceCache",
    "MSE_WEIGHTS",
    "au_loss",
    "bce_weights",
    "build_cache",
    "class_counts",
    "expand_weights",
    "mse_weights",
    "read_datasets",
    "subject_groups",
    "write_synthetic_datasets",
]
