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
integration weight) sees the training participants only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

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
from fergi.preference._bootstrap import bootstrap_ratio, bootstrap_selective, selective_accuracy
from fergi.preference._ensemble import ENSEMBLE_COLUMNS, EnsembleScore, IntegratedScore
from fergi.preference._faunet import FAUNet
from fergi.preference._grids import K_GRID
from fergi.preference._linear import QUANTILE_THRESHOLDS, Linear12Valence, fit_threshold
from fergi.preference._pairs import KEY_COLUMNS, correct_mask, pair_index

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


# ----------------------------------------------------------------------------- data
@dataclass
class ReactionData:
    """Reactions of a study in memory: what annotation and evaluation read.

    Attributes
    ----------
    clips : DataFrame
        Raw activation values of every baseline and reaction clip
        (:func:`fergi.features.compute_activation_values`).
    images : DataFrame
        One row per image: ``participant, session, image`` and whatever survey columns
        exist (``rank_score``, the six scores, ratings); may hold NaN.
    invalid : set of (participant, session, image)
        Images to leave out (all-black safety-checker outputs).
    provenance : FeatureProvenance
        Which AU estimator made the features.
    frames : DataFrame, optional
        The per-frame table (needed by the ``quantile`` normalisation).
    source : str
        Where the data came from (for messages).
    """

    clips: pd.DataFrame
    images: pd.DataFrame
    invalid: set = field(default_factory=set)
    provenance: FeatureProvenance = UNKNOWN_PROVENANCE
    frames: pd.DataFrame | None = None
    source: str = "reactions"

    @property
    def participants(self) -> list[str]:
        return sorted(self.images["participant"].astype(str).unique())

    def with_transformed_aus(self, transform, *, seed: int = 0) -> ReactionData:
        """The same reactions with every participant's per-frame AU values transformed.

        For robustness checks: does a model's labelling survive another AU scale?

        Parameters
        ----------
        transform : callable
            ``transform(values, rng) -> values`` gets the ``(n_frames, 12)`` AU values of
            one participant (``-1`` marks frames without a face) and a NumPy generator.
        seed : int
            Seed of the generator, drawn from participant by participant in sorted order.

        Returns
        -------
        ReactionData
            With activation values recomputed and provenance ``unknown``.
        """
        if self.frames is None:
            raise FergiError(f"{self.source}: no per-frame features to transform")
        rng = np.random.default_rng(seed)
        frames = self.frames.copy()
        who = frames["participant"].astype(str).to_numpy()
        columns = list(AU_NAMES)
        values = frames[columns].to_numpy(dtype=float, copy=True)
        for p in np.unique(who):
            rows = who == p
            values[rows] = transform(values[rows], rng)
        frames[columns] = values
        return reaction_data_from_frames(frames, self.images, invalid=self.invalid,
                                         source=f"{self.source} (transformed AUs)")

    def subset(self, participants) -> ReactionData:
        """The same data restricted to ``participants``."""
        keep = {str(p) for p in participants}

        def pick(df):
            return None if df is None else df[df["participant"].astype(str).isin(keep)]

        return replace(self, clips=pick(self.clips), images=pick(self.images),
                       frames=pick(self.frames),
                       invalid={k for k in self.invalid if str(k[0]) in keep})


def reaction_data_from_frames(frames: pd.DataFrame, images: pd.DataFrame | None = None, *,
                              invalid=(), provenance: FeatureProvenance = UNKNOWN_PROVENANCE,
                              keep_frames: bool = True, source: str = "reactions") -> ReactionData:
    """Build :class:`ReactionData` from a per-frame table (``fergi.datasets.load_frames``).

    Without ``images``, every reaction clip is an image (no survey answers).
    """
    clips = compute_activation_values(frames)
    clips = clips.assign(participant=clips["participant"].astype(str))
    if images is None:
        images = clips.loc[clips["clip"] == "reaction", list(KEY_COLUMNS)].reset_index(drop=True)
    return ReactionData(clips=clips, images=images, invalid=set(invalid), provenance=provenance,
                        frames=frames if keep_frames else None, source=source)


# ----------------------------------------------------------------------------- model
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


# ----------------------------------------------------------------------------- helpers
def _preprocessing(provenance: FeatureProvenance) -> str:
    # Meta files written before the choice existed were made with fergi's preprocessing.
    return provenance.preprocessing or "fergi"


def _finite(table: pd.DataFrame, columns) -> pd.Series:
    columns = list(columns)
    if any(c not in table.columns for c in columns):
        return pd.Series(False, index=table.index)
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return pd.Series(np.isfinite(values).all(axis=1), index=table.index)


def _usable(table: pd.DataFrame, columns, *, ranked: bool) -> pd.DataFrame:
    keep = _finite(table, columns)
    if ranked:
        if "rank_score" not in table.columns:
            return table.iloc[0:0]
        keep &= pd.to_numeric(table["rank_score"], errors="coerce").notna()
    return table[keep].reset_index(drop=True)


def _has_scores(table: pd.DataFrame) -> bool:
    return bool(len(table)) and bool(_finite(table, ENSEMBLE_COLUMNS).all())


def _pair_diffs(scores: np.ndarray, table: pd.DataFrame):
    pairs = pair_index(table)
    return scores[pairs.a] - scores[pairs.b], pairs.sign


def _threshold(model: PreferenceModel) -> float:
    threshold = model.abstention_threshold
    return 0.0 if threshold is None else float(threshold)


# ----------------------------------------------------------------------------- evaluation
COVERAGES = (10.0, 19.4, 30.0)


def evaluate_lopo(model: AnnotationModel, data: ReactionData, *, participants=None,
                  coverages=COVERAGES, n_boot: int = 2000, seed: int = 0) -> dict:
    """Strict leave-one-participant-out evaluation of an annotation model.

    For every held-out participant, the quantile reference (``quantile``), the valence
    model, its abstention threshold, the ensemble weights and z-scoring, the integration
    weight and its threshold are all fitted on the other participants alone; the held-out
    participant's own baseline clips (``baseline_median``) are theirs, as at annotation
    time. Accuracy counts within-session pairs of different rank; a zero difference is
    wrong (the published rule).

    Returns
    -------
    dict
        ``n_participants``, ``n_pairs``; ``selective`` (pairs above each fold's threshold:
        ``accuracy``, ``ci``, ``coverage``, ``n_selected``), ``independent`` (all pairs),
        ``integrated`` and ``integrated_selective`` (when scores exist), ``at_coverage``
        (``{"au": {percent: {accuracy, ci}}, "integrated": ...}``: accuracy on the top
        x % of pairs by |difference|, pooled), ``per_participant`` (DataFrame) and
        ``fits`` (per-fold parameters), ``thresholds`` and ``integration_thresholds``
        (participant -> the abstention thresholds of the fold that held them out; None
        where no integration was fitted) and ``scores`` (the out-of-fold image table with
        ``valence_score`` and ``integrated_score``).
    """
    model._check_params()
    everyone = data.participants if participants is None else sorted(str(p) for p in participants)
    data = data.subset(everyone)
    template = model._valence_template()
    needed = template.required_columns
    quantile = model.normalization == "quantile"
    if quantile:
        if data.frames is None:
            raise FergiError(f"{data.source}: the quantile normalisation needs the per-frame features")
        qn = QuantileNormalizer(aus=tuple(model._aus()))
        labels_q, per_q = qn.participant_quantiles(data.frames)
        ranks = qn.ranks(data.frames)
        base_table = None
    else:
        full = model.image_table(data)
        few = full.attrs.get("too_few_baselines", [])
        if few:
            logger.warning("%s: participant(s) %s have fewer than %d valid baseline clips; left out "
                           "of the evaluation", data.source, ", ".join(few), model.min_baseline_clips)
        base_table = _usable(full, needed, ranked=True)
    folds = []
    for held in everyone:
        if quantile:
            train_q = per_q[[str(p) != held for p in labels_q]]
            train_q = train_q[~np.isnan(train_q).any(axis=(1, 2))]
            normalizer = QuantileNormalizer(aus=qn.aus)._set_reference(train_q, len(train_q))
            table = _usable(model.image_table(data, normalizer=normalizer, ranks=ranks), needed, ranked=True)
        else:
            table = base_table
        is_held = table["participant"].astype(str).to_numpy() == held
        if not is_held.any():
            continue
        fold = AnnotationModel(clone(template), model.normalization, integrate=model.integrate,
                               penalty=model.penalty, fallback="none")
        fold._fit_table(table[~is_held].reset_index(drop=True))
        fold.is_fitted_ = True
        scored = fold.score_table(table[is_held].reset_index(drop=True), integrate=True)
        folds.append((held, fold, scored))
    if not folds:
        raise FergiError(f"{data.source}: no participant with ranked images to evaluate")
    scored = pd.concat([s for _, _, s in folds], ignore_index=True)
    pairs = pair_index(scored)
    codes = pairs.group
    n_groups = len(pairs.group_labels)
    thresholds = {h: _threshold(f.valence_) for h, f, _ in folds}
    ithresholds = {h: f.integration_threshold_ for h, f, _ in folds}
    group_label = np.asarray(pairs.group_labels, dtype=object)[codes]
    valence = scored[VALENCE_COLUMN].to_numpy()
    diff = valence[pairs.a] - valence[pairs.b]
    ok = correct_mask(diff, pairs.sign)
    selected = np.abs(diff) >= np.array([thresholds[g] for g in group_label])

    def per(mask):
        return np.bincount(codes, weights=mask, minlength=n_groups)

    n_pairs = per(np.ones(len(diff)))
    table = pd.DataFrame({"participant": pairs.group_labels.astype(str), "n_pairs": n_pairs.astype(int),
                          "n_selected": per(selected).astype(int),
                          "n_correct_selected": per(ok & selected).astype(int),
                          "n_correct_all": per(ok).astype(int)})

    def summary(num, den):
        total = float(np.sum(den))
        return {"accuracy": round(100.0 * float(np.sum(num)) / total, 2) if total else float("nan"),
                "ci": bootstrap_ratio(num, den, n_boot=n_boot, seed=seed),
                "n": int(total)}

    result = {
        "model": repr(model),
        "normalization": model.normalization,
        "n_participants": n_groups,
        "n_pairs": len(diff),
        "selective": {**summary(table["n_correct_selected"], table["n_selected"]),
                      "coverage": round(100.0 * selected.mean(), 2) if len(diff) else float("nan")},
        "independent": summary(table["n_correct_all"], table["n_pairs"]),
        "at_coverage": {"au": {}},
    }
    for percent in coverages:
        result["at_coverage"]["au"][f"{percent:g}"] = {
            "accuracy": selective_accuracy(diff, pairs.sign, percent),
            "ci": bootstrap_selective(diff, pairs.sign, codes, percent, n_boot=n_boot, seed=seed)}
    integrated = scored["integrated_score"].to_numpy()
    if np.isfinite(integrated).all() and all(t is not None for t in ithresholds.values()):
        idiff = integrated[pairs.a] - integrated[pairs.b]
        iok = correct_mask(idiff, pairs.sign)
        isel = np.abs(idiff) >= np.array([ithresholds[g] for g in group_label])
        table["n_correct_integrated"] = per(iok).astype(int)
        table["n_selected_integrated"] = per(isel).astype(int)
        table["n_correct_integrated_selected"] = per(iok & isel).astype(int)
        result["integrated"] = summary(table["n_correct_integrated"], table["n_pairs"])
        result["integrated_selective"] = {
            **summary(table["n_correct_integrated_selected"], table["n_selected_integrated"]),
            "coverage": round(100.0 * isel.mean(), 2)}
        result["at_coverage"]["integrated"] = {
            f"{p:g}": {"accuracy": selective_accuracy(idiff, pairs.sign, p),
                       "ci": bootstrap_selective(idiff, pairs.sign, codes, p, n_boot=n_boot, seed=seed)}
            for p in coverages}
    result["per_participant"] = table
    result["fits"] = {h: f.valence_.to_dict() for h, f, _ in folds}
    # Each held-out participant's labels use the thresholds of the fold fitted without them.
    result["thresholds"] = thresholds
    result["integration_thresholds"] = ithresholds
    result["scores"] = scored
    return result


def format_evaluation(result: dict) -> str:
    """The strict-LOPO figures of :func:`evaluate_lopo` as terminal text."""

    def line(name, entry, extra=""):
        lo, hi = entry["ci"]
        return f"  {name:<34}{entry['accuracy']:>7.2f} %   [{lo:.2f}, {hi:.2f}]{extra}"

    s = result["selective"]
    lines = [f"Strict leave-one-participant-out: {result['n_participants']} participants, "
             f"{result['n_pairs']} pairs (95 % participant-bootstrap intervals)",
             line("selective (own thresholds)", s, f"   coverage {s['coverage']:.2f} %"),
             line("independent (all pairs)", result["independent"])]
    if "integrated" in result:
        si = result["integrated_selective"]
        lines += [line("integrated with the ensemble", result["integrated"]),
                  line("integrated, selective", si, f"   coverage {si['coverage']:.2f} %")]
    for kind, name in (("au", "reactions"), ("integrated", "integrated")):
        for percent, entry in result["at_coverage"].get(kind, {}).items():
            lines.append(line(f"{name}, top {percent} % of pairs", entry))
    return "\n".join(lines)


def participant_summary(result: dict) -> pd.DataFrame:
    """Per-participant accuracies (percent) of an :func:`evaluate_lopo` result."""
    t = result["per_participant"].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        t["selective_accuracy"] = (100.0 * t["n_correct_selected"] / t["n_selected"]).round(2)
        t["independent_accuracy"] = (100.0 * t["n_correct_all"] / t["n_pairs"]).round(2)
    return t

