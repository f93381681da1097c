"""Annotation models: normalisation + valence model + integration, with their provenance.

An :class:`AnnotationModel` is everything ``fergi annotate`` needs to turn reactions into
labels that mean the same whatever AU estimator made the features:

* a **normalisation** of the activation values (``none``, ``baseline_median`` or
  ``quantile``; see :func:`fergi.features.baseline_normalize` and :class:`fergi.features.QuantileNormalizer`), applied per participant from their
  own data at annotation time;
* a **valence model** on the normalised image table (AUcomb, linear12 or FAU-Net);
* optionally an **integration** with the z-scored ImageReward / PickScore / HPS v2
  ensemble (eq. 10), with an abstention threshold of its own;
* optionally a **fallback** annotation model (``quantile``) for participants with too few
  baseline clips for ``baseline_median``;
* the **provenance** of the features it was fitted on (estimator and scale), so that a
  model reading raw values refuses features of another scale.

:func:`evaluate_lopo` evaluates one under strict leave-one-participant-out: everything
fitted (quantile reference, valence parameters, thresholds, ensemble weights, z-scoring,
integration weight) sees the training participants only (:mod:`fergi.preference._evaluation`).

Why about 500 lines: this module is one class, :class:`AnnotationModel` (fit, annotate,
its file format), and the compatibility checks it runs on the features it reads; the
data it reads (``_reaction_data``), its table helpers and its evaluation are modules of
their own.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.datasets import (
    AU_NAMES,
    RELEASE,
    UNKNOWN_PROVENANCE,
    FeatureProvenance,
)
from fergi.features import (
    NORMALIZATIONS,
    QuantileNormalizer,
    baseline_normalize,
    compute_activation_values,
    image_table,
)
from fergi.preference._aucomb import AUcombValence
from fergi.preference._base import PreferenceModel, clone
from fergi.preference._ensemble import ENSEMBLE_COLUMNS, EnsembleScore, IntegratedScore
from fergi.preference._faunet import FAUNet
from fergi.preference._grids import K_GRID
from fergi.preference._linear import QUANTILE_THRESHOLDS, Linear12Valence, fit_threshold
from fergi.preference._pairs import pair_index
from fergi.preference._reaction_data import ReactionData
from fergi.preference._table_helpers import (
    _finite,
    _has_scores,
    _pair_diffs,
    _preprocessing,
    _threshold,
    _usable,
)

logger = logging.getLogger(__name__)


#: AUcomb's k grid in baseline units: the paper's grid divided by 10, because a typical
#: baseline activation is about 0.1 on the release's IR-50 scale (median over the 33
#: participants: AU4 0.10, AU12 0.11), so ``k / 10`` on values in baseline units is the
#: paper's ``k`` on the IR-50 scale.
BASELINE_K_GRID: tuple[float, ...] = tuple(round(k / 10.0, 6) for k in K_GRID)

VALENCE_KINDS = {"AUcombValence": AUcombValence, "Linear12Valence": Linear12Valence,
                 "FAUNet": FAUNet}
MODEL_NAMES = {"aucomb": "AUcombValence", "linear12": "Linear12Valence", "faunet": "FAUNet"}
ON_FEW_BASELINES = ("fallback", "skip", "error")
VALENCE_COLUMN = "valence_score"


def default_valence(name: str = "aucomb", normalization: str = "baseline_median") -> PreferenceModel:
    """An unfitted valence model by name, with grids suited to the normalisation."""
    if name == "aucomb":
        return AUcombValence(k_grid=BASELINE_K_GRID if normalization == "baseline_median" else K_GRID)
    if name == "linear12":
        return Linear12Valence()
    if name == "faunet":
        return FAUNet()
    raise FergiError(f"--model {name!r}: unknown model (choose from {', '.join(MODEL_NAMES)})")


class AnnotationModel:
    """Normalisation, valence model, integration and fallback: one annotation model.

    Parameters
    ----------
    valence : PreferenceModel, optional
        Unfitted valence model (default :func:`default_valence` ``("aucomb", normalization)``).
    normalization : {"baseline_median", "quantile", "none"}
        How activation values are made comparable across estimators and people.
    min_baseline_clips : int, default 3
        ``baseline_median`` needs at least this many valid baseline clips per participant.
    fallback : {"quantile", "none"}
        With ``baseline_median``: also fit a ``quantile`` model for participants with too
        few baseline clips.
    integrate : bool, default True
        Also fit the integration with the baseline-score ensemble (eq. 10) when the
        training images have the ImageReward, PickScore and HPS v2 scores.
    penalty : float
        Abstention objective of the integrated score's threshold (eq. 9's rule).

    Attributes
    ----------
    valence_ : PreferenceModel
    normalizer_ : QuantileNormalizer or None
    integration_ : IntegratedScore or None
    integration_threshold_ : float or None
    fallback_ : AnnotationModel or None
    features_ : FeatureProvenance
        The provenance of the features the model was fitted on.
    """

    def __init__(self, valence: PreferenceModel | None = None, normalization: str = "baseline_median",
                 *, min_baseline_clips: int = 3, fallback: str = "quantile", integrate: bool = True,
                 penalty: float = 2.0):
        self.valence = valence
        self.normalization = normalization
        self.min_baseline_clips = min_baseline_clips
        self.fallback = fallback
        self.integrate = integrate
        self.penalty = penalty

    def get_params(self, deep: bool = True) -> dict:
        return {"valence": self.valence, "normalization": self.normalization,
                "min_baseline_clips": self.min_baseline_clips, "fallback": self.fallback,
                "integrate": self.integrate, "penalty": self.penalty}

    def __repr__(self) -> str:
        return (f"AnnotationModel({type(self._valence_template()).__name__}, "
                f"normalization={self.normalization!r})")

    # -- pieces ------------------------------------------------------------------------
    def _check_params(self):
        if self.normalization not in NORMALIZATIONS:
            raise FergiError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, "
                             f"got {self.normalization!r}")
        if self.fallback not in ("quantile", "none"):
            raise FergiError(f"fallback must be 'quantile' or 'none', got {self.fallback!r}")

    def _valence_template(self) -> PreferenceModel:
        return self.valence if self.valence is not None else default_valence("aucomb", self.normalization)

    @property
    def scale_free(self) -> bool:
        """Whether labels stay the same when an AU is rescaled per participant."""
        return self.normalization != "none"

    def _aus(self) -> list[str]:
        columns = self._valence_template().required_columns
        return [c.removesuffix("_activation_value") for c in columns if c.endswith("_activation_value")]

    def image_table(self, data: ReactionData, *, normalizer: QuantileNormalizer | None = None,
                    ranks: np.ndarray | None = None) -> pd.DataFrame:
        """The image table of ``data`` with normalised activation values.

        Rows of participants whose values cannot be normalised (too few baseline
        clips) have NaN activations; ``attrs["too_few_baselines"]`` names them.
        """
        self._check_params()
        clips = data.clips
        too_few: list[str] = []
        flat: list[str] = []
        if self.normalization == "baseline_median":
            # Only the AUs the valence model reads: an unused AU that never moves at rest
            # (landmark AUs clip at 0) must not cost a participant their normalisation.
            clips = baseline_normalize(clips, aus=self._aus(), min_baseline_clips=self.min_baseline_clips)
            too_few, flat = clips.attrs["too_few_baselines"], clips.attrs["flat_baselines"]
        elif self.normalization == "quantile":
            normalizer = normalizer if normalizer is not None else self.normalizer_
            if data.frames is None:
                raise FergiError(f"{data.source}: the quantile normalisation needs the per-frame features")
            aus = self._aus()
            frames = data.frames
            if ranks is None:
                ranks = QuantileNormalizer(aus=normalizer.aus).ranks(frames)
            idx = [list(normalizer.aus).index(au) for au in aus]
            mapped = normalizer.map_ranks(np.nan_to_num(ranks, nan=0.0))[:, idx]
            frames = frames.drop(columns=[c for c in frames.columns if c.startswith("AU")])
            frames = frames.assign(**{au: mapped[:, j] for j, au in enumerate(aus)})
            clips = compute_activation_values(frames, aus=aus)
        table = image_table(data.images, clips, data.invalid)
        table.attrs["too_few_baselines"] = too_few
        table.attrs["flat_baselines"] = flat
        return table

    def _fit_table(self, table: pd.DataFrame, groups=None) -> AnnotationModel:
        """Fit the valence model and the integration on a normalised image table."""
        train = _usable(table, self._valence_template().required_columns, ranked=True)
        if train.empty:
            raise FergiError("image table: no ranked image with activation values to fit on")
        self.valence_ = clone(self._valence_template()).fit(train, groups=train["participant"])
        self.integration_ = None
        self.integration_threshold_ = None
        if self.integrate and _has_scores(train):
            scored = train.assign(**{VALENCE_COLUMN: self.valence_.score_images(train)})
            integ = IntegratedScore(base=EnsembleScore(), valence=VALENCE_COLUMN).fit(scored)
            diff, sign = _pair_diffs(integ.score_images(scored), scored)
            self.integration_ = integ
            self.integration_threshold_ = fit_threshold(diff, sign, QUANTILE_THRESHOLDS, self.penalty)
        self.n_pairs_ = len(pair_index(train))
        self.n_participants_ = int(train["participant"].nunique())
        return self

    def fit(self, data: ReactionData, y=None, *, groups=None) -> AnnotationModel:
        """Fit on every ranked image of ``data`` (the normaliser, valence, integration, fallback)."""
        self._check_params()
        check_features_have_aus(self, data)
        self.normalizer_ = None
        if self.normalization == "quantile":
            if data.frames is None:
                raise FergiError(f"{data.source}: the quantile normalisation needs the per-frame features")
            self.normalizer_ = QuantileNormalizer(aus=tuple(self._aus())).fit(data.frames)
        table = self.image_table(data)
        self._fit_table(table)
        self.fallback_ = None
        if self.normalization == "baseline_median" and self.fallback == "quantile" and data.frames is not None:
            template = self._valence_template()
            fb_valence = (AUcombValence(**{**template.get_params(), "k_grid": K_GRID})
                          if isinstance(template, AUcombValence) else clone(template))
            self.fallback_ = AnnotationModel(fb_valence, "quantile", fallback="none",
                                             integrate=self.integrate, penalty=self.penalty).fit(data)
        self.features_ = data.provenance
        self.is_fitted_ = True
        return self

    def _check_fitted(self):
        if not getattr(self, "is_fitted_", False):
            raise FergiError("AnnotationModel: not fitted yet (call fit or load a model file)")

    # -- scoring -----------------------------------------------------------------------
    def score_table(self, table: pd.DataFrame, *, integrate: bool = False) -> pd.DataFrame:
        """Valence (and, with ``integrate``, integrated) scores of a normalised table."""
        self._check_fitted()
        out = table.copy()
        usable = _finite(out, self.valence_.required_columns)
        out[VALENCE_COLUMN] = np.nan
        if usable.any():
            out.loc[usable, VALENCE_COLUMN] = self.valence_.score_images(out[usable])
        out["integrated_score"] = np.nan
        if integrate and self.integration_ is not None:
            rows = usable & _finite(out, ENSEMBLE_COLUMNS)
            if rows.any():
                out.loc[rows, "integrated_score"] = self.integration_.score_images(out[rows])
        return out

    def annotate(self, data: ReactionData, *, integrate: bool = False,
                 on_few_baselines: str = "fallback") -> pd.DataFrame:
        """Pairwise labels for every within-session pair of valid images of ``data``.

        Parameters
        ----------
        data : ReactionData
        integrate : bool
            Label pairs whose two images have the ImageReward, PickScore and HPS v2
            scores with the integrated score (eq. 10) instead of reactions alone.
        on_few_baselines : {"fallback", "skip", "error"}
            For participants with fewer valid baseline clips than the model needs:
            use the stored fallback model, leave them out (with a warning), or stop.

        Returns
        -------
        DataFrame
            ``participant, session, image_a, image_b, preferred, score_difference,
            confident, label_source, normalization``.
        """
        self._check_fitted()
        if on_few_baselines not in ON_FEW_BASELINES:
            raise FergiError(f"on_few_baselines must be one of {', '.join(ON_FEW_BASELINES)}")
        if integrate and self.integration_ is None:
            raise FergiError("this model has no integration (it was fitted without the "
                             "ImageReward, PickScore and HPS v2 scores)")
        check_features_have_aus(self, data)
        table = self.image_table(data)
        few = list(table.attrs.get("too_few_baselines", []))
        few = [p for p in few if p in set(table["participant"].astype(str))]
        parts = []
        primary = table[~table["participant"].astype(str).isin(few)]
        parts.append(self._labels(primary, integrate))
        if few:
            flat = [p for p in few if p in set(table.attrs.get("flat_baselines", []))]
            short = [p for p in few if p not in flat]
            reasons = []
            if short:
                reasons.append(f"{', '.join(short)} have fewer than {self.min_baseline_clips} "
                               "valid baseline clips")
            if flat:
                reasons.append(f"{', '.join(flat)}: {'/'.join(self._aus())} never moved in "
                               "their baseline clips")
            what = (f"{data.source}: no baseline-median normalisation for participant(s) "
                    f"{'; '.join(reasons)}")
            if on_few_baselines == "error":
                raise FergiError(what + " (choose --on-few-baselines fallback or skip)")
            if on_few_baselines == "fallback" and self.fallback_ is not None and data.frames is not None:
                logger.warning("%s; labelled with the quantile-mapped fallback model", what)
                sub = data.subset(few)
                parts.append(self.fallback_._labels(self.fallback_.image_table(sub), integrate))
            else:
                reason = ("the model has no fallback" if on_few_baselines == "fallback" else "skip")
                logger.warning("%s; left out (%s)", what, reason)
        labels = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else parts[0]
        return labels.sort_values(["participant", "session", "image_a", "image_b"], ignore_index=True)

    def _labels(self, table: pd.DataFrame, integrate: bool) -> pd.DataFrame:
        columns = ["participant", "session", "image_a", "image_b", "preferred",
                   "score_difference", "confident", "label_source", "normalization"]
        usable = _finite(table, self.valence_.required_columns)
        dropped = int((~usable).sum())
        if dropped:
            logger.warning("annotate: %d image(s) without activation values left out", dropped)
        table = table[usable].reset_index(drop=True)
        if table.empty:
            return pd.DataFrame(columns=columns)
        scored = self.score_table(table, integrate=integrate)
        pairs = pair_index(scored, ranked=False)
        image = scored["image"].to_numpy()
        valence = scored[VALENCE_COLUMN].to_numpy()
        diff = valence[pairs.a] - valence[pairs.b]
        confident = np.abs(diff) >= _threshold(self.valence_)
        source = np.full(len(diff), "reactions", dtype=object)
        if integrate:
            integrated = scored["integrated_score"].to_numpy()
            idiff = integrated[pairs.a] - integrated[pairs.b]
            both = np.isfinite(idiff)
            diff = np.where(both, idiff, diff)
            confident = np.where(both, np.abs(idiff) >= self.integration_threshold_, confident)
            source[both] = "integrated"
        undecided = ~(np.isfinite(diff) & (diff != 0))
        preferred = pd.array(np.where(diff > 0, image[pairs.a], image[pairs.b]), dtype="Int64")
        preferred[undecided] = pd.NA
        return pd.DataFrame({
            "participant": scored["participant"].astype(str).to_numpy()[pairs.a],
            "session": scored["session"].to_numpy()[pairs.a],
            "image_a": image[pairs.a],
            "image_b": image[pairs.b],
            "preferred": preferred,
            "score_difference": diff,
            "confident": confident & ~undecided,
            "label_source": source,
            "normalization": self.normalization,
        }, columns=columns)

    # -- files -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        self._check_fitted()
        norm: dict = {"method": self.normalization}
        if self.normalization == "baseline_median":
            norm.update(statistic="median", min_baseline_clips=int(self.min_baseline_clips))
        elif self.normalization == "quantile":
            norm.update(self.normalizer_.to_dict())
        integration = None
        if self.integration_ is not None:
            ens = self.integration_.base_
            integration = {
                "base": "ensemble", "columns": list(ens.columns),
                "weights": [float(v) for v in ens.weights_],
                "mean": [float(v) for v in ens.mean_], "std": [float(v) for v in ens.std_],
                "a": float(self.integration_.a_), "threshold": float(self.integration_threshold_),
            }
        return {
            "normalization": norm,
            "valence": {"kind": type(self.valence_).__name__, "model": self.valence_.to_dict()},
            "integration": integration,
            "fallback": None if getattr(self, "fallback_", None) is None else self.fallback_.to_dict(),
            "features": self.features_.to_dict(),
            "n_participants": int(getattr(self, "n_participants_", 0)),
            "n_pairs": int(getattr(self, "n_pairs_", 0)),
            "penalty": self.penalty,
        }

    @classmethod
    def from_dict(cls, data: dict) -> AnnotationModel:
        norm = data["normalization"]
        method = norm["method"]
        if method not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")
        valence_kind = data["valence"]["kind"]
        if valence_kind not in VALENCE_KINDS:
            raise ValueError(f"unknown valence model {valence_kind!r}")
        valence = VALENCE_KINDS[valence_kind].from_dict(data["valence"]["model"])
        model = cls(clone(valence), method, min_baseline_clips=int(norm.get("min_baseline_clips", 3)),
                    integrate=data.get("integration") is not None,
                    penalty=float(data.get("penalty", 2.0)))
        if model.min_baseline_clips < 1:
            raise ValueError("min_baseline_clips must be at least 1")
        model.valence_ = valence
        model.normalizer_ = QuantileNormalizer.from_dict(norm) if method == "quantile" else None
        model.integration_ = None
        model.integration_threshold_ = None
        integ = data.get("integration")
        if integ is not None:
            ens = EnsembleScore(columns=tuple(integ["columns"]))
            ens.weights_ = np.asarray(integ["weights"], dtype=float)
            ens.mean_ = np.asarray(integ["mean"], dtype=float)
            ens.std_ = np.asarray(integ["std"], dtype=float)
            arrays = (ens.weights_, ens.mean_, ens.std_)
            if any(a.shape != (len(ens.columns),) or not np.isfinite(a).all() for a in arrays) or (ens.std_ <= 0).any():
                raise ValueError("integration: weights, mean and std need one finite value per column (std > 0)")
            ens.is_fitted_ = True
            it = IntegratedScore(base=ens, valence=VALENCE_COLUMN)
            it.base_, it.a_, it.is_fitted_ = ens, float(integ["a"]), True
            model.integration_ = it
            model.integration_threshold_ = float(integ["threshold"])
        fb = data.get("fallback")
        model.fallback_ = cls.from_dict(fb) if fb else None
        model.fallback = "quantile" if model.fallback_ is not None else "none"
        model.features_ = FeatureProvenance.from_dict(data.get("features") or RELEASE.to_dict(),
                                                      source="model file")
        model.n_participants_ = int(data.get("n_participants", 0))
        model.n_pairs_ = int(data.get("n_pairs", 0))
        model.is_fitted_ = True
        return model

    def describe(self) -> str:
        """One line: the model, its normalisation and the features it was fitted on."""
        self._check_fitted()
        name = {v: k for k, v in MODEL_NAMES.items()}.get(type(self.valence_).__name__, "?")
        text = f"{name}, normalization {self.normalization}"
        if self.fallback_ is not None:
            text += " (quantile fallback)"
        if self.integration_ is not None:
            text += f", integrates the ensemble (a={self.integration_.a_:g})"
        return text + f"; fitted on {self.features_.describe()}"


def check_compatibility(model, provenance: FeatureProvenance, *, where: str = "features",
                        model_name: str = "the model", force: bool = False) -> None:
    """Refuse a model that reads raw AU values on features of another scale.

    Scale-free models (``baseline_median``, ``quantile``) accept any estimator. A raw
    model (normalisation ``none``, or a bare valence model) needs features of the scale
    it was fitted on; features of unknown provenance get a warning.

    Raises
    ------
    fergi.FergiError
        One line saying what to do.
    """
    if isinstance(model, AnnotationModel) and model.scale_free:
        if provenance.known and provenance.scale != model.features_.scale:
            logger.info("%s: %s; %s was fitted on %s and is scale-free (%s)", where,
                        provenance.describe(), model_name, model.features_.describe(),
                        model.normalization)
        return
    # A valence model fitted in the library carries no provenance: nothing to compare.
    fitted = getattr(model, "features_", UNKNOWN_PROVENANCE)
    if provenance.estimator == "mixed":
        message = (f"{where}: features from several AU estimators ({provenance.source}); "
                   f"{model_name} reads raw AU values and needs one scale")
    elif not provenance.known or not fitted.known:
        # A model file from fergi 0.1 or features without features_meta.json: nothing to
        # compare, so say so rather than refuse.
        logger.warning("%s: features %s; cannot check that the AU scale matches %s (fitted on %s)",
                       where, provenance.describe(), model_name, fitted.describe())
        return
    elif provenance.scale == fitted.scale:
        return
    elif (_preprocessing(provenance) != _preprocessing(fitted)
          and replace(provenance, preprocessing=None).scale
          == replace(fitted, preprocessing=None).scale):
        message = (f"{where}: features made with preprocessing {_preprocessing(provenance)!r}, but "
                   f"{model_name} was fitted on features made with preprocessing "
                   f"{_preprocessing(fitted)!r} (same AU model, different input crops); "
                   f"re-extract with --preprocessing {_preprocessing(fitted)} or fit a model on "
                   "these features")
    else:
        message = (f"{where}: features from {provenance.describe()}, but {model_name} reads raw AU "
                   f"values on the {fitted.scale} scale; use a scale-free model (the default, "
                   "or `fergi fit --normalization baseline_median`) or fit one on these features")
    if force:
        logger.warning("%s (forced)", message)
        return
    raise FergiError(message)


def missing_aus(data: ReactionData) -> list[str]:
    """AUs the features lack: empty (NaN) in every frame, or listed by the provenance."""
    missing = set(data.provenance.missing_aus or ())
    if data.frames is not None:
        for au in AU_NAMES:
            if au in data.frames.columns and data.frames[au].isna().all():
                missing.add(au)
    return [au for au in AU_NAMES if au in missing]


def check_features_have_aus(model, data: ReactionData, *, model_name: str = "the model") -> None:
    """Refuse, in one line, a model that reads an AU the features do not have.

    Raises
    ------
    fergi.FergiError
        Naming the AUs, the features' estimator and what to do.
    """
    lacking = missing_aus(data)
    if not lacking:
        return
    if isinstance(model, AnnotationModel):
        needed = model._aus()
        fallback = getattr(model, "fallback_", None)
        if fallback is not None:
            needed = needed + [au for au in fallback._aus() if au not in needed]
    else:
        needed = [c.removesuffix("_activation_value") for c in getattr(model, "required_columns", ())
                  if c.endswith("_activation_value")]
    both = [au for au in needed if au in lacking]
    if both:
        raise FergiError(
            f"{data.source}: the features have no {', '.join(both)} ({data.provenance.describe()} "
            f"does not estimate {'it' if len(both) == 1 else 'them'}), but {model_name} reads "
            f"{', '.join(needed)}; use a model without {'it' if len(both) == 1 else 'them'} "
            "(e.g. `fergi fit --model aucomb`, which reads AU4 and AU12)")
