"""One registry of AU estimators, with each one's input preprocessing and output scale."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fergi._errors import FergiError
from fergi._registry import Registry
from fergi.au._geometry import GeometryAUEstimator
from fergi.au._ir50 import IR50AUEstimator


@dataclass(frozen=True)
class AUEstimatorSpec:
    """What fergi knows about an AU estimator.

    Attributes
    ----------
    name : str
    factory : callable
        ``factory(**options)`` returns the estimator.
    input_kind : str
        ``"landmarks"``: ``(N, 478, 3)`` FaceMesh landmarks in pixels;
        ``"face"``: ``(N, 112, 112, 3)`` float faces in [0, 1] (from
        ``fergi.face.AuthorsPreprocessor`` with the ``authors`` preprocessing, the default
        of :func:`fergi.au.extract_features`, or ``fergi.face.preprocess_face``).
    preprocessing : str
        The input preparation, in words.
    output_scale : str
        What the numbers mean.
    needs_reference : bool
        Whether a neutral reference (baseline) changes the output.
    version : str
        Version of the estimator's algorithm; bumped whenever its output changes, and
        written to ``features_meta.json`` so that models know which scale they read.
    """

    name: str
    factory: Callable
    input_kind: str
    preprocessing: str
    output_scale: str
    needs_reference: bool
    version: str = "1"


_REGISTRY: Registry[AUEstimatorSpec] = Registry("AU estimator", "--estimator", sort=True)


def register_au_estimator(spec: AUEstimatorSpec) -> None:
    """Add (or replace) an estimator in the registry."""
    _REGISTRY.register(spec)


def list_au_estimators() -> list[str]:
    """Names accepted by :func:`create_au_estimator`."""
    return _REGISTRY.names()


def get_au_estimator_spec(name: str) -> AUEstimatorSpec:
    """The registry entry of ``name``.

    Raises
    ------
    fergi.FergiError
        Unknown name.
    """
    return _REGISTRY.get(name)


def create_au_estimator(name: str = "geometry", **options):
    """Create an AU estimator by name (open_clip-style factory).

    Parameters
    ----------
    name : {"geometry", "ir50"}
        ``geometry``: landmark geometry relative to a neutral reference (offline,
        fast). ``ir50``: the FERGI paper's IResNet-50 appearance model; needs
        ``checkpoint=PATH``.
    **options
        Passed to the estimator: ``geometry`` takes ``reference_quantile``; ``ir50``
        takes ``checkpoint``, ``backbone``, ``device``, ``batch_size``. ``checkpoint``
        is ignored by ``geometry``.

    Returns
    -------
    estimator
        With ``input_kind``, ``fit(reference_inputs)`` and ``predict(inputs) ->
        (N, 12)`` in ``AU_NAMES`` order; its registry entry is ``estimator.spec``.

    Raises
    ------
    fergi.FergiError
        Unknown name, or ``ir50`` without a checkpoint or backbone.
    """
    spec = get_au_estimator_spec(name)
    estimator = spec.factory(**options)
    estimator.spec = spec
    return estimator


def _make_geometry(checkpoint=None, **options):
    if checkpoint is not None:
        raise FergiError(
            "--checkpoint: the geometry estimator has no weights (use --estimator ir50)"
        )
    return GeometryAUEstimator(**options)


def _make_ir50(checkpoint=None, **options):
    if checkpoint is None and options.get("backbone") is None:
        raise FergiError(
            "--checkpoint: the ir50 estimator needs weights (a state_dict of IResNet-50 "
            "with a Linear(512*7*7, 64*6) last layer); none can be downloaded"
        )
    return IR50AUEstimator(checkpoint, **options)


register_au_estimator(
    AUEstimatorSpec(
        name="geometry",
        factory=_make_geometry,
        input_kind="landmarks",
        preprocessing="FaceMesh (refine_landmarks) 478 landmarks in pixels; 3-D similarity "
        "alignment on forehead, nose bridge and eye corners; inter-ocular units; per-person "
        "neutral reference: the median face of a baseline clip, else of the first "
        "--baseline-seconds, else of the clip's least-expressive stable frames (v1 used the "
        "clip's median face)",
        output_scale="0-5, DISFA-like intensity of the change from the neutral face "
        "(documented gains, not calibrated on annotations)",
        needs_reference=True,
        version="2",
    )
)
register_au_estimator(
    AUEstimatorSpec(
        name="ir50",
        factory=_make_ir50,
        input_kind="face",
        preprocessing="default 'authors': the FERGI authors' own pipeline, exactly (BlazeFace "
        "Tasks API, widest face; margin box top -0.2, bottom +0.05, sides 0.125 of the box "
        "with int() margins and black padding; MobileFaceNet 68-landmark ffhq-style alignment; "
        "heNlm on the RGB array as BGR; padding to 112x112; RGB float in [0, 1]); 'fergi': "
        "BlazeFace box with the same margins, rotated so the FaceMesh eyes are level, 112x112, "
        "luma-ratio contrast step",
        output_scale="DISFA 0-5 regression output (index AU - 1 of the first 64 outputs)",
        needs_reference=False,
    )
)
