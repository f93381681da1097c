"""A session's clip tables: the per-frame tables keyed as ``load_frames`` has them, their
activation values, and the pairwise labels (what both the server's processing and
:func:`fergi.study.process_session_media` compute from the per-frame features).

It reads the library's public names (``fergi.au``, ``fergi.features``,
``fergi.preference``) at module level, so the study loads pandas when it loads this room.
"""

from __future__ import annotations

import logging

from fergi._errors import FergiError
from fergi.au import features_provenance, get_au_estimator_spec
from fergi.datasets import FeatureProvenance
from fergi.features import compute_activation_values
from fergi.preference import (
    AnnotationModel,
    ReactionData,
    annotate_pairs,
    annotate_reactions,
    load_model,
)

logger = logging.getLogger(__name__)


def _activations_stage(frames, *, participant: str, session: int):
    table = _frames_table(frames, participant=participant, session=session)
    if table is None:
        raise FergiError("no clips to summarise")
    return compute_activation_values(table)


LABEL_COLUMNS = (
    "participant",
    "session",
    "image_a",
    "image_b",
    "preferred",
    "score_difference",
    "confident",
)


def _frames_table(frames, *, participant: str, session: int):
    """The per-frame tables of a session's clips as one keyed table (``load_frames`` layout)."""
    import pandas as pd

    tables = []
    for (image, clip), table in sorted(frames.items()):
        keyed = table.copy()
        keyed.insert(0, "clip", clip)
        keyed.insert(0, "image", int(image))
        keyed.insert(0, "session", int(session))
        keyed.insert(0, "participant", str(participant))
        tables.append(keyed)
    return pd.concat(tables, ignore_index=True) if tables else None


def session_provenance(estimator, checkpoint=None):
    """Provenance of a session's features: each reaction clip is measured against its own
    image's baseline clip (``baseline_clip``; ``absolute`` for estimators without one)."""

    spec = getattr(estimator, "spec", None)
    if spec is None and isinstance(estimator, str):
        spec = get_au_estimator_spec(estimator)
    if spec is None:
        return FeatureProvenance("unknown")
    return features_provenance(
        estimator, checkpoint,
        neutral_reference="baseline_clip" if spec.needs_reference else "absolute",
    )


def _labels_stage(activations, *, model, invalid_images, frames=None, provenance=None):
    """Pairwise labels of a session's valid images.

    With an :class:`~fergi.preference.AnnotationModel` (the default is scale-free), the
    session's own baseline clips normalise its reactions; its per-frame ``frames`` feed
    the quantile fallback when too few baseline clips are valid.
    """
    import pandas as pd

    if model is None:
        try:
            model = load_model(None)
        except FergiError as exc:
            raise FergiError(f"annotation model unavailable ({exc})") from exc
    reaction = activations[
        (activations["clip"] == "reaction")
        & activations["clip_valid"].astype(bool)
        & ~activations["image"].isin(set(invalid_images))
    ]
    reaction = reaction.dropna(subset=["AU4_activation_value", "AU12_activation_value"])
    if len(reaction) < 2:
        logger.info("fewer than 2 valid reaction clips: no pairs to label")
        return pd.DataFrame(columns=list(LABEL_COLUMNS))

    keys = ["participant", "session", "image"]
    clips = activations.assign(participant=activations["participant"].astype(str))
    participant, session = str(clips["participant"].iloc[0]), int(clips["session"].iloc[0])
    data = ReactionData(
        clips=clips,
        images=clips.loc[clips["clip"] == "reaction", keys].reset_index(drop=True),
        invalid={(participant, session, int(i)) for i in invalid_images},
        provenance=provenance or FeatureProvenance("unknown"),
        frames=frames,
        source=f"participant {participant} session {session}",
    )
    if not isinstance(model, AnnotationModel):
        # A bare valence model from an older model file: raw values, as before.
        return annotate_pairs(reaction.reset_index(drop=True), model)
    return annotate_reactions(data, model)


def session_features_provenance(estimator: str = "geometry"):
    """The provenance of a processed study session's feature files.

    Every reaction clip is read against its image's own baseline clip (and each
    baseline clip against itself), so the neutral reference is ``"baseline_clip"``
    (``"absolute"`` for estimators that need none).

    Parameters
    ----------
    estimator : str, default "geometry"
        The study's AU estimator (``StudySettings.estimator``).

    Returns
    -------
    fergi.datasets.FeatureProvenance
    """
    return session_provenance(estimator)


#: Public names of the stages' table functions, for the study's worker.
activations_stage = _activations_stage
frames_table = _frames_table
labels_stage = _labels_stage
