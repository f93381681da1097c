"""A persistent cache of scores keyed by (scorer, weights, image content, prompt)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path


def image_hash(path) -> str:
    """SHA-256 of an image file's bytes: a renamed or copied image keeps its scores."""
    h = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ScoreCache:
    """Scores already computed, in an SQLite file.

    A score is reused only for the same scorer name, the same fingerprint
    (:attr:`fergi.scorers.Scorer.fingerprint`: the weights' hash, the precision and
    fergi's computation version), the same image bytes and the same prompt, so new
    weights, fp16 instead of fp32, or an edited image are scored again.

    Parameters
    ----------
    path : path
        The SQLite file (created with its folder).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (scorer TEXT, weights TEXT, image TEXT, "
                         "prompt TEXT, value REAL, PRIMARY KEY (scorer, weights, image, prompt))")
        self._db.commit()

    def get(self, scorer: str, weights: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
        """Cached values of ``(image_hash, prompt)`` keys (absent keys are left out)."""
        found = {}
        rows = self._db.execute("SELECT image, prompt, value FROM scores WHERE scorer=? AND weights=?",
                                (scorer, weights))
        wanted = set(keys)
        for image, prompt, value in rows:
            if (image, prompt) in wanted:
                found[(image, prompt)] = value
        return found

    def put(self, scorer: str, weights: str, items: list[tuple[tuple[str, str], float]]) -> None:
        """Store ``((image_hash, prompt), value)`` pairs (committed at once: a crash keeps them)."""
        self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                             [(scorer, weights, img, prompt, float(v)) for (img, prompt), v in items])
        self._db.commit()

    def close(self) -> None:
        self._db.close()
