"""The provenance record (``features_meta.json``) of an AU estimator's features."""

from __future__ import annotations

import os

from fergi import __version__
from fergi._errors import FergiError
from fergi.au._extract import check_preprocessing
from fergi.au._registry import get_au_estimator_spec
from fergi.datasets import NEUTRAL_REFERENCES, FeatureProvenance, sha256_file


def features_provenance(
    estimator="geometry",
    checkpoint: str | os.PathLike | None = None,
    *,
    neutral_reference: str | None = None,
    preprocessing: str | None = None,
):
    """What to write to ``features_meta.json`` beside features made by ``estimator``.

    Parameters
    ----------
    estimator : str or estimator, default "geometry"
        A registry name or an estimator from :func:`create_au_estimator` (its
        ``spec`` and, for ``ir50``, its ``checkpoint`` are used).
    checkpoint : str or path-like, optional
        The weights file of a learned estimator; its SHA-256 identifies the AU scale.
        Taken from the estimator's ``checkpoint`` attribute when omitted.
    neutral_reference : str, optional
        ``"baseline_clip"``, ``"baseline_seconds"``, ``"least_expressive"``,
        ``"absolute"`` or ``"mixed"`` (several within one folder). Default: ``"absolute"`` for
        estimators that need no neutral face, else ``"least_expressive"`` (what
        :func:`extract_features` uses without a baseline).
    preprocessing : {"authors", "fergi"}, optional
        The face preprocessing; default that of :func:`extract_features`: ``"authors"``
        for ``ir50``, ``"fergi"`` for ``geometry``.

    Returns
    -------
    fergi.datasets.FeatureProvenance
        Estimator name, the registry's version, the weights' SHA-256 (None without
        weights), the neutral reference, the preprocessing and the fergi version.

    Raises
    ------
    fergi.FergiError
        Unknown estimator or neutral reference, or an unreadable checkpoint.
    """
    if isinstance(estimator, str):
        spec = get_au_estimator_spec(estimator)
    else:
        spec = getattr(estimator, "spec", None)
        if spec is None:
            raise FergiError(
                f"{type(estimator).__name__}: not from create_au_estimator (no registry spec)"
            )
        if checkpoint is None:
            checkpoint = getattr(estimator, "checkpoint", None)
    if neutral_reference is None:
        neutral_reference = "least_expressive" if spec.needs_reference else "absolute"
    if neutral_reference not in NEUTRAL_REFERENCES:
        raise FergiError(
            f"neutral_reference {neutral_reference!r}: unknown (choose from "
            f"{', '.join(NEUTRAL_REFERENCES)})"
        )
    preprocessing = check_preprocessing(spec.name, preprocessing)
    digest = None
    if checkpoint is not None:
        try:
            digest = sha256_file(checkpoint)
        except OSError as exc:
            raise FergiError(f"{checkpoint}: cannot read the checkpoint ({exc.strerror})") from None
    return FeatureProvenance(
        estimator=spec.name,
        estimator_version=spec.version,
        checkpoint_sha256=digest,
        neutral_reference=neutral_reference,
        fergi_version=__version__,
        preprocessing=preprocessing,
    )
