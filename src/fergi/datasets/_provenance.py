"""Which AU estimator made a folder of per-frame feature files (``features_meta.json``).

The per-frame CSV schema is the release's and carries no provenance, so ``fergi extract``
and the study worker write a small JSON file beside their outputs::

    {"format": "fergi-features-meta", "version": 1,
     "estimator": "geometry", "estimator_version": "2",
     "checkpoint_sha256": null, "neutral_reference": "baseline_clip",
     "fergi_version": "0.2.0", "preprocessing": "fergi"}

A meta file describes every feature file in its folder and below it; the nearest one up
the tree wins. A folder without any meta file whose files are those of the public FERGI
release (names and a checksum sample against the manifest shipped with fergi) counts as
``ir50-fergi``: the authors' IR-50 AU model. Anything else is ``unknown``.

The *scale* of a provenance names the AU scale: two feature sets share a scale only when
the same estimator (and, for learned ones, the same weights and face preprocessing) made
them. ``preprocessing`` is ``"authors"`` (the FERGI authors' own pipeline, the default of
``ir50``) or ``"fergi"`` (FaceMesh-based; ``geometry``, and ``ir50`` on request); a meta
file without it was written before fergi had the choice, with ``"fergi"``. A preference
model that reads raw activation values is only valid on its own scale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from fergi import __version__
from fergi._atomic import publish, temporary_beside
from fergi._errors import FergiError
from fergi.datasets._fetch import load_manifest

logger = logging.getLogger(__name__)

META_NAME = "features_meta.json"
META_FORMAT = "fergi-features-meta"
RELEASE_ESTIMATOR = "ir50-fergi"
UNKNOWN = "unknown"
NEUTRAL_REFERENCES = (
    "baseline_clip",  # the same person's baseline clip (the study's 5 s before each image)
    "baseline_seconds",  # the first seconds of the video itself
    "least_expressive",  # the clip's own least-expressive stable frames
    "absolute",  # the estimator needs no neutral face (learned appearance models)
    "mixed",  # several of the above within one folder (see the extract report)
)
"""The values of :attr:`FeatureProvenance.neutral_reference`: what AU values are measured against."""
# Files hashed to recognise the public release (spread over participants and clip kinds).
_RELEASE_SAMPLE = 24


@dataclass(frozen=True)
class FeatureProvenance:
    """Where a set of per-frame features came from.

    Attributes
    ----------
    estimator : str
        ``geometry``, ``ir50``, ``ir50-fergi`` (the public release: the authors' IR-50
        model), ``unknown`` or ``mixed``.
    estimator_version : str or None
        Version of the estimator's algorithm (changes whenever its output changes).
    checkpoint_sha256 : str or None
        SHA-256 of the weights of a learned estimator.
    neutral_reference : str or None
        How the neutral face was taken (see ``NEUTRAL_REFERENCES``).
    fergi_version : str or None
        The fergi version that wrote the features.
    source : str
        Where this was read from: a meta file, ``public release (checksums)`` or
        ``no features_meta.json``.
    au_scale : str or None
        What the AU values are, for features imported from another tool
        (``fergi import-features``), e.g. ``OpenFace AU intensity (AUxx_r), 0-5``.
    normalization_required : str or None
        ``baseline_median`` for imported features: only scale-free models read them.
    pose_ratios : str or None
        How the pitch and yaw ratios of imported features were computed
        (``landmarks_68``, ``facemesh_478`` or ``head_pose_angles``).
    missing_aus : tuple of str or None
        AUs the tool does not estimate (NaN in the feature files).
    preprocessing : str or None
        The face preprocessing: ``"authors"`` or ``"fergi"`` (None: not known).
    """

    estimator: str
    estimator_version: str | None = None
    checkpoint_sha256: str | None = None
    neutral_reference: str | None = None
    fergi_version: str | None = None
    source: str = ""
    au_scale: str | None = None
    normalization_required: str | None = None
    pose_ratios: str | None = None
    missing_aus: tuple[str, ...] | None = None
    preprocessing: str | None = None

    @property
    def scale(self) -> str:
        """Identity of the AU scale: equal scales mean raw activation values compare."""
        if self.estimator in (RELEASE_ESTIMATOR, UNKNOWN, "mixed"):
            return self.estimator
        if self.checkpoint_sha256:
            scale = f"{self.estimator}:{self.checkpoint_sha256[:16]}"
        elif self.estimator_version:
            scale = f"{self.estimator}-v{self.estimator_version}"
        else:
            scale = self.estimator
        # The same weights read other numbers from the authors' crops than from fergi's
        # (and "fergi" is what every meta file without the field was made with).
        if self.preprocessing == "authors":
            scale += "/authors"
        # Imported features: py-feat probabilities and intensities are different scales.
        return f"{scale} ({self.au_scale})" if self.au_scale else scale

    @property
    def known(self) -> bool:
        return self.estimator not in (UNKNOWN, "mixed")

    def describe(self) -> str:
        """A short human description, e.g. ``geometry v2 (neutral: baseline_clip)``."""
        if self.estimator == RELEASE_ESTIMATOR:
            return "ir50-fergi (the public FERGI release: the authors' IR-50 AU model, DISFA 0-5)"
        if self.estimator == UNKNOWN:
            return "unknown (no features_meta.json)"
        text = self.estimator
        if self.estimator_version:
            text += f" v{self.estimator_version}"
        if self.checkpoint_sha256:
            text += f", weights sha256 {self.checkpoint_sha256[:12]}"
        if self.preprocessing:
            text += f", preprocessing {self.preprocessing}"
        if self.au_scale:
            text += f" ({self.au_scale}, imported)"
        elif self.neutral_reference:
            text += f" (neutral: {self.neutral_reference})"
        return text

    def to_dict(self) -> dict:
        """The provenance as stored in model files (``source`` left out)."""
        out = asdict(self)
        out.pop("source")
        # The fields of imported features only where set (older files stay as they were).
        for name in _IMPORT_FIELDS:
            if out[name] is None:
                out.pop(name)
        if out.get("missing_aus") is not None:
            out["missing_aus"] = list(out["missing_aus"])
        out["scale"] = self.scale
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "") -> FeatureProvenance:
        if not isinstance(data, dict) or not isinstance(data.get("estimator"), str):
            raise ValueError("no 'estimator' name")
        fields = ("estimator_version", "checkpoint_sha256", "neutral_reference", "fergi_version",
                  "preprocessing")
        values = {}
        for name in fields:
            value = data.get(name)
            if value is not None and not isinstance(value, str | int | float):
                raise ValueError(f"{name!r} must be a string")
            values[name] = None if value is None else str(value)
        for name in ("au_scale", "normalization_required", "pose_ratios"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name!r} must be a string")
            values[name] = value
        missing = data.get("missing_aus")
        if missing is not None:
            if not isinstance(missing, list | tuple) or not all(isinstance(a, str) for a in missing):
                raise ValueError("'missing_aus' must be a list of AU names")
            missing = tuple(missing)
        return cls(estimator=data["estimator"], source=source, missing_aus=missing, **values)


_IMPORT_FIELDS = ("au_scale", "normalization_required", "pose_ratios", "missing_aus")

RELEASE = FeatureProvenance(RELEASE_ESTIMATOR, neutral_reference="absolute",
                            source="public release (checksums)", preprocessing="authors")
"""The provenance of the public FERGI release's features (the authors' IR-50, recognised by checksums)."""
UNKNOWN_PROVENANCE = FeatureProvenance(UNKNOWN, source="no features_meta.json")
"""The provenance of a features folder without ``features_meta.json`` (estimator unknown)."""


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_features_meta(folder: str | os.PathLike, provenance: FeatureProvenance | dict, *,
                        extra: dict | None = None) -> Path:
    """Write ``folder/features_meta.json`` atomically.

    Parameters
    ----------
    folder : path-like
        The output folder of the feature files (created if needed).
    provenance : FeatureProvenance or dict
        ``estimator``, ``estimator_version``, ``checkpoint_sha256``,
        ``neutral_reference``, ``fergi_version``, ``preprocessing`` (and, for imported features,
        ``au_scale``, ``normalization_required``, ``pose_ratios``, ``missing_aus``).
    extra : dict, optional
        More keys for the document (e.g. ``sources``: each imported file's SHA-256);
        they never replace the provenance's own.

    Returns
    -------
    pathlib.Path
    """
    if isinstance(provenance, dict):
        provenance = FeatureProvenance.from_dict(provenance)
    document = {"format": META_FORMAT, "version": 1, **provenance.to_dict()}
    document.pop("scale")
    for key, value in (extra or {}).items():
        document.setdefault(key, value)
    if document.get("fergi_version") is None:
        document["fergi_version"] = __version__
    path = Path(folder) / META_NAME
    fd, tmp = temporary_beside(path, ".features_meta-", ".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=1)
            handle.write("\n")
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FergiError(f"{path}: cannot write ({exc.strerror})") from None
    publish(tmp, path)
    return path


def read_features_meta(path: str | os.PathLike) -> FeatureProvenance:
    """Read one ``features_meta.json``.

    Raises
    ------
    fergi.FergiError
        Unreadable, not JSON, or not a fergi features meta file (one line, naming it).
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FergiError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FergiError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise FergiError(f"{path}: not a features meta file (invalid JSON: {exc.msg})") from None
    if not isinstance(document, dict) or document.get("format") != META_FORMAT:
        raise FergiError(f"{path}: not a fergi features meta file (no '\"format\": \"{META_FORMAT}\"')")
    try:
        return FeatureProvenance.from_dict(document, source=str(path))
    except ValueError as exc:
        raise FergiError(f"{path}: malformed features meta file ({exc})") from None


def _feature_files(root: Path) -> list[Path]:
    base = root / "data" if (root / "data").is_dir() else root
    found = []
    # os.walk with followlinks: a study folder may link participant folders in.
    for folder, _dirs, names in os.walk(base, followlinks=True):
        for name in names:
            if "_features." in name and name.lower().endswith((".csv", ".parquet")):
                found.append(Path(folder) / name)
    return sorted(found)


def is_public_release(root: str | os.PathLike, files: list[Path] | None = None) -> bool:
    """Whether the feature files under ``root`` are those of the public FERGI release.

    Every file name must be one of the release's, and a spread sample of the files must
    match the SHA-256 manifest shipped with fergi (so rescaled or re-extracted copies are
    not taken for the release).
    """
    root = Path(root)
    files = _feature_files(root) if files is None else files
    if not files:
        return False
    manifest = load_manifest()
    names = []
    for file in files:
        try:
            name = file.relative_to(root).as_posix()
        except ValueError:
            return False
        if name not in manifest:
            return False
        names.append(name)
    step = max(1, len(names) // _RELEASE_SAMPLE)
    sample = names[::step][:_RELEASE_SAMPLE] + [names[-1]]
    return all(sha256_file(root / name) == manifest[name] for name in dict.fromkeys(sample))


def _governing_meta(file: Path, stop: Path, cache: dict[Path, Path | None]) -> Path | None:
    """The nearest ``features_meta.json`` at or above ``file``'s folder, up to ``stop``."""
    folder = file.parent
    visited = []
    found = None
    while True:
        if folder in cache:
            found = cache[folder]
            break
        visited.append(folder)
        candidate = folder / META_NAME
        if candidate.is_file():
            found = candidate
            break
        if folder == stop or folder.parent == folder:
            break
        folder = folder.parent
    for f in visited:
        cache[f] = found
    return found


def feature_provenance(root: str | os.PathLike) -> FeatureProvenance:
    """The provenance of the per-frame features of a release-layout folder.

    Parameters
    ----------
    root : path-like
        A folder holding ``data/`` (the release layout) or feature files directly.

    Returns
    -------
    FeatureProvenance
        The provenance shared by every feature file; ``estimator="mixed"`` (with the
        parts in ``source``) when files come from different estimators or scales,
        ``ir50-fergi`` for the public release and ``unknown`` for files without a meta
        file.

    Raises
    ------
    fergi.FergiError
        A malformed ``features_meta.json``.
    """
    root = Path(root)
    files = _feature_files(root)
    cache: dict[Path, Path | None] = {}
    by_meta: Counter = Counter(_governing_meta(f, root, cache) for f in files)
    provenances: dict[str, tuple[FeatureProvenance, int]] = {}
    for meta, n in by_meta.items():
        prov = read_features_meta(meta) if meta is not None else None
        if prov is None:
            without = [f for f in files if cache.get(f.parent) is None]
            prov = RELEASE if is_public_release(root, without) else UNKNOWN_PROVENANCE
        key = prov.scale
        if key in provenances:
            old, count = provenances[key]
            # Same scale, several meta files (e.g. one per study session): merge.
            if old.neutral_reference != prov.neutral_reference:
                old = FeatureProvenance(**{**asdict(old), "neutral_reference": "mixed"})
            provenances[key] = (old, count + n)
        else:
            provenances[key] = (prov, n)
    if not provenances:
        return UNKNOWN_PROVENANCE
    if len(provenances) == 1:
        return next(iter(provenances.values()))[0]
    parts = "; ".join(f"{n} file(s) {p.describe()}" for p, n in provenances.values())
    return FeatureProvenance("mixed", source=parts)
