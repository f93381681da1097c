"""Participant pseudonyms (a salted hash; the salt stays in the study) and withdrawals."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

import pandas as pd

from fergi._errors import FergiError
from fergi.preference.export._columns import SALT_NAME, WITHDRAWN_NAME

logger = logging.getLogger(__name__)


def study_salt(root, *, salt_file=None) -> bytes:
    """The study's secret salt for participant pseudonyms, created once.

    Parameters
    ----------
    root : path-like
        The study folder; the salt lives in ``root/.fergi_salt`` (mode 0600).
    salt_file : path-like, optional
        Another place for it (for a read-only study folder); created when missing.

    Returns
    -------
    bytes

    Raises
    ------
    fergi.FergiError
        The salt file cannot be read or created.
    """
    path = Path(salt_file) if salt_file is not None else Path(root) / SALT_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise FergiError(f"{path}: cannot create the study's salt file ({exc.strerror}); "
                         "pass --salt-file with a writable place") from None
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        logger.info("%s: created the study's pseudonym salt (keep it; never share it)", path)
    try:
        text = path.read_text().strip()
        salt = bytes.fromhex(text)
    except OSError as exc:
        raise FergiError(f"{path}: cannot read the salt file ({exc.strerror})") from None
    except ValueError:
        raise FergiError(f"{path}: not a fergi salt file (expected hex digits)") from None
    if len(salt) < 16:
        raise FergiError(f"{path}: salt too short ({len(salt)} bytes, at least 16 needed)")
    return salt


def _digest(salt: bytes, text: str) -> str:
    return hmac.new(salt, text.encode(), hashlib.sha256).hexdigest()


def pseudonym(participant: str, salt: bytes) -> str:
    """A participant's exported ID: 16 hex digits of HMAC-SHA256(salt, ID)."""
    return _digest(salt, f"participant:{participant}")[:16]


def _int_id(hex_digits: str) -> int:
    # 60 bits: a positive int64, as Pick-a-Pic's user_id and ranking_id.
    return int(hex_digits[:15], 16)


def withdrawn_participants(root) -> set[str]:
    """Participants to leave out of every export, as the study folder records them.

    Read from ``withdrawn.json`` (a list of participant IDs, or ``{"participants": [...]}``)
    and from a ``withdrawn`` column of ``study/sessions.csv`` (a participant with any
    session marked true is left out whole).

    Raises
    ------
    fergi.FergiError
        A malformed ``withdrawn.json``.
    """
    root = Path(root)
    out: set[str] = set()
    file = root / WITHDRAWN_NAME
    if file.is_file():
        try:
            doc = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FergiError(f"{file}: cannot read ({exc.__class__.__name__})") from None
        ids = doc.get("participants") if isinstance(doc, dict) else doc
        if not isinstance(ids, list) or not all(isinstance(p, str | int) for p in ids):
            raise FergiError(f"{file}: expected a list of participant IDs "
                             '(or {"participants": [...]})')
        out |= {str(p) for p in ids}
    sessions = root / "study" / "sessions.csv"
    if sessions.is_file():
        table = pd.read_csv(sessions, dtype=str, keep_default_na=False)
        if "withdrawn" in table.columns and "participant" in table.columns:
            flagged = table["withdrawn"].str.strip().str.lower().isin(("1", "true", "yes"))
            out |= set(table.loc[flagged, "participant"])
    return out
