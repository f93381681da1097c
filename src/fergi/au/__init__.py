"""Action-unit (AU) estimation and per-frame feature extraction.

* :func:`create_au_estimator` builds an estimator from the registry
  (:func:`list_au_estimators`): ``geometry`` (FaceMesh landmark geometry relative to a
  neutral face, offline and fast, the default) or ``ir50`` (the FERGI paper's
  IResNet-50 appearance model; needs a checkpoint). Each registry entry
  (:func:`get_au_estimator_spec`) records the input preprocessing and output scale.
* :func:`extract_features` turns a video into the release's per-frame table
  (``fergi.datasets.FRAME_COLUMNS``); :func:`write_features` writes it atomically with
  the release's exact number formatting; ``table.attrs["neutral_reference"]`` says
  which neutral face the ``geometry`` estimator read against.
* :func:`features_provenance` describes an estimator's output for
  ``features_meta.json`` (:func:`fergi.datasets.write_features_meta`).
"""

from fergi.au._extract import STAGES, extract_features, format_features_csv, write_features
from fergi.au._geometry import (
    BROW_COMPENSATION,
    GAINS,
    STABLE_POINTS,
    GeometryAUEstimator,
    least_expressive_frames,
)
from fergi.au._ir50 import AU_OUTPUT_INDEX, IR50AUEstimator, build_ir50
from fergi.au._provenance import features_provenance
from fergi.au._registry import (
    AUEstimatorSpec,
    create_au_estimator,
    get_au_estimator_spec,
    list_au_estimators,
    register_au_estimator,
)

__all__ = [
    "AU_OUTPUT_INDEX",
    "BROW_COMPENSATION",
    "GAINS",
    "STABLE_POINTS",
    "STAGES",
    "AUEstimatorSpec",
    "GeometryAUEstimator",
    "IR50AUEstimator",
    "build_ir50",
    "create_au_estimator",
    "extract_features",
    "features_provenance",
    "format_features_csv",
    "get_au_estimator_spec",
    "least_expressive_frames",
    "list_au_estimators",
    "register_au_estimator",
    "write_features",
]
