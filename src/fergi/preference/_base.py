"""Shared behaviour of the preference models (scikit-learn conventions)."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.preference._pairs import KEY_COLUMNS, pair_index, require_columns


class PreferenceModel:
    """Base class: parameters, cloning and pairwise prediction from per-image scores.

    Subclasses implement ``fit(table, y=None, *, groups=None)`` and ``score_images(table)``,
    and list the columns they read in ``required_columns``.
    """

    required_columns: tuple[str, ...] = ()

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """Constructor parameters (scikit-learn protocol)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set constructor parameters (scikit-learn protocol)."""
        for name, value in params.items():
            if name not in self._param_names():
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if not _is_grid(v))
        return f"{type(self).__name__}({args})"

    def _check_table(self, table: pd.DataFrame, what: str = "image table") -> None:
        require_columns(table, self.required_columns, what)
        values = table[list(self.required_columns)].apply(pd.to_numeric, errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float)).all(axis=0)
        if bad.any():
            names = [c for c, b in zip(values.columns, bad, strict=True) if b]
            raise FergiError(
                f"{what}: missing, non-numeric or infinite values in column(s) {', '.join(names)}"
            )

    def _check_fitted(self) -> None:
        if not getattr(self, "is_fitted_", False):
            raise FergiError(f"{type(self).__name__}: not fitted yet (call fit or load a model file)")

    @property
    def abstention_threshold(self) -> float | None:
        """Smallest |score difference| for which the model predicts (None: no abstention)."""
        return None

    def decision_function(self, table: pd.DataFrame) -> np.ndarray:
        """Per-image valence score (alias of :meth:`score_images`)."""
        return self.score_images(table)

    def predict(self, table: pd.DataFrame) -> pd.DataFrame:
        """Pairwise predictions for every within-session pair of ``table``.

        Returns
        -------
        DataFrame
            ``participant, session, image_a, image_b, preferred, score_difference, confident``:
            ``score_difference`` is score(a) - score(b); ``preferred`` is the image with the
            higher score (missing on a tie); ``confident`` is False where the model abstains
            (|difference| below its threshold).
        """
        require_columns(table, KEY_COLUMNS)
        scores = np.asarray(self.score_images(table), dtype=float)
        pairs = pair_index(table, ranked=False)
        diff = scores[pairs.a] - scores[pairs.b]
        image = table["image"].to_numpy()
        preferred = pd.array(
            np.where(diff > 0, image[pairs.a], image[pairs.b]), dtype="Int64"
        )
        # A tie or an undefined score (e.g. a model with non-finite parameters) prefers nothing.
        undecided = ~(np.isfinite(diff) & (diff != 0))
        preferred[undecided] = pd.NA
        threshold = self.abstention_threshold
        confident = np.abs(diff) >= threshold if threshold is not None else np.ones(len(diff), bool)
        confident &= ~undecided
        return pd.DataFrame(
            {
                "participant": table["participant"].to_numpy()[pairs.a],
                "session": table["session"].to_numpy()[pairs.a],
                "image_a": image[pairs.a],
                "image_b": image[pairs.b],
                "preferred": preferred,
                "score_difference": diff,
                "confident": confident,
            }
        )


def _is_grid(value) -> bool:
    return isinstance(value, tuple | list | np.ndarray) and len(value) > 3


def clone(model: PreferenceModel) -> PreferenceModel:
    """An unfitted copy of ``model`` with the same parameters."""
    return type(model)(**model.get_params())
