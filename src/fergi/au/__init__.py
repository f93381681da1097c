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
* :func:`import_features` turns one clip's output of another AU tool (OpenFace 2.x
  ``FeatureExtraction``, py-feat ``Fex``, LibreFace; :data:`SOURCES`) into the same
  per-frame table; :func:`import_feature_folder` imports a folder of them into the
  release layout with ``features_meta.json`` (``fergi import-features``).
* :func:`features_provenance` describes an estimator's output for
  ``features_meta.json`` (:func:`fergi.datasets.write_features_meta`).
"""

from fergi.au._extract import (
    STAGES,
    check_preprocessing,
    default_preprocessing,
    extract_features,
)
from fergi.au._geometry import (
    BROW_COMPENSATION,
    GAINS,
    STABLE_POINTS,
    GeometryAUEstimator,
    least_expressive_frames,
)
from fergi.au._import import import_features
from fergi.au._import_folder import ImportSummary, import_feature_folder
from fergi.au._import_tools import (
    AU_COLUMNS,
    AU_SCALES,
    SOURCES,
    ratios_from_head_pose,
    read_tool_output,
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
from fergi.au._write import format_features_csv, write_features

__all__ = [
    "AU_COLUMNS",
    "AU_OUTPUT_INDEX",
    "AU_SCALES",
    "SOURCES",
    "ImportSummary",
    "import_feature_folder",
    "import_features",
    "ratios_from_head_pose",
    "read_tool_output",
    "BROW_COMPENSATION",
    "GAINS",
    "STABLE_POINTS",
    "STAGES",
    "AUEstimatorSpec",
    "GeometryAUEstimator",
    "IR50AUEstimator",
    "build_ir50",
    "check_preprocessing",
    "default_preprocessing",
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
