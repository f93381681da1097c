"""A persistent cache of scores keyed by (scorer, weights, image content, prompt).

An image is keyed by the SHA-256 of its file's bytes (:func:`fergi.datasets.sha256_file`),
so a renamed or copied image keeps its scores.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


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
        """Cached values of ``(SHA-256 of the image file, prompt)`` keys (absent keys are left out)."""
        found = {}
        rows = self._db.execute("SELECT image, prompt, value FROM scores WHERE scorer=? AND weights=?",
                                (scorer, weights))
        wanted = set(keys)
        for image, prompt, value in rows:
            if (image, prompt) in wanted:
                found[(image, prompt)] = value
        return found

    def put(self, scorer: str, weights: str, items: list[tuple[tuple[str, str], float]]) -> None:
        """Store ``((SHA-256 of the image file, prompt), value)`` pairs (committed at once: a crash keeps them)."""
        self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                             [(scorer, weights, img, prompt, float(v)) for (img, prompt), v in items])
        self._db.commit()

    def close(self) -> None:
        self._db.close()
