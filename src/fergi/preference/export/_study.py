"""What an export reads from a study folder: consent, session facts and the images."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from fergi._errors import FergiError
from fergi.preference.export._columns import IMAGE_SUFFIXES


def consent_status(root) -> str:
    """One sentence on the consent the study folder records (``study/sessions.csv``)."""
    sessions = Path(root) / "study" / "sessions.csv"
    if not sessions.is_file():
        return ("This study folder records no consent information (no study/sessions.csv): "
                "sharing is governed by the terms under which the data were collected "
                "(for the public FERGI release, its authors' LICENSE).")
    table = pd.read_csv(sessions, dtype=str, keep_default_na=False)
    if "exported" in table.columns:
        table = table[table["exported"].str.lower().isin(("true", "1"))]
    consented = table[table.get("consent_at", pd.Series("", index=table.index)) != ""]
    versions = sorted(set(consented.get("consent_version", pd.Series(dtype=str))) - {""})
    shared = consented.get("share_video", pd.Series("", index=consented.index))
    n_share = int(shared.str.lower().isin(("true", "1")).sum())
    return (f"{len(consented)} of {len(table)} exported sessions have recorded consent "
            f"(consent text version(s): {', '.join(versions) or 'unknown'}); {n_share} allowed "
            "sharing their face video, which is never part of this export.")


def _session_facts(root: Path) -> tuple[dict, dict, dict]:
    """Prompt, generator and finishing time of every session of a ``fergi export`` folder."""
    captions: dict = {}
    generators: dict = {}
    created: dict = {}
    prompts = root / "study" / "prompts.csv"
    if prompts.is_file():
        with prompts.open(newline="") as handle:
            for row in csv.DictReader(handle):
                key = (str(row.get("participant", "")), int(row.get("session") or 0))
                captions[key] = row.get("prompt") or ""
                generators[key] = row.get("generator") or ""
    sessions = root / "study" / "sessions.csv"
    if sessions.is_file():
        with sessions.open(newline="") as handle:
            for row in csv.DictReader(handle):
                when = row.get("finished_at") or row.get("created_at") or ""
                stamp = pd.to_datetime(when, errors="coerce") if when else pd.NaT
                if not pd.isna(stamp):
                    key = (str(row.get("participant", "")), int(row.get("session") or 0))
                    created[key] = stamp.tz_localize(None) if stamp.tzinfo else stamp
    return captions, generators, created


class ImageStore:
    """The generated images of a study: ``images/<participant>/session_<s>/image_<i>.<ext>``.

    Parameters
    ----------
    folder : path-like
        The ``images`` folder (``fergi export`` writes it beside ``data/``).
    cache_size : int
        How many encoded JPEGs to keep (an image is in several pairs); bounded so that
        memory does not grow with the study.
    """

    def __init__(self, folder, *, cache_size: int = 256):
        self.folder = Path(folder)
        self.cache_size = cache_size
        self._cache: dict = {}

    def path(self, participant: str, session: int, image: int) -> Path | None:
        stem = self.folder / str(participant) / f"session_{int(session)}" / f"image_{int(image)}"
        for suffix in IMAGE_SUFFIXES:
            candidate = stem.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        return None

    def expected(self, participant: str, session: int, image: int) -> Path:
        return self.folder / str(participant) / f"session_{int(session)}" / f"image_{int(image)}.png"

    def require(self, participant: str, session: int, image: int) -> Path:
        path = self.path(participant, session, image)
        if path is None:
            raise FergiError(f"{self.expected(participant, session, image)}: missing image "
                             "(every labelled image must be in the images folder)")
        return path

    def jpeg(self, participant: str, session: int, image: int) -> bytes:
        """The image as JPEG bytes (a JPEG file as it is; others converted, quality 95)."""
        key = (str(participant), int(session), int(image))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        path = self.require(*key)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            data = path.read_bytes()
        else:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as img:
                    buffer = io.BytesIO()
                    img.convert("RGB").save(buffer, format="JPEG", quality=95)
            except (UnidentifiedImageError, OSError) as exc:
                raise FergiError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
            data = buffer.getvalue()
        if len(self._cache) >= self.cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = data
        return data
