"""Raw video encrypted at rest (``FERGI_MEDIA_KEY``, a Fernet key), and the check that
the key in use is the one the stored media were written with."""

from __future__ import annotations

import logging

from fergi._errors import FergiError

logger = logging.getLogger(__name__)

#: Start of a Fernet token (version byte 0x80, base64url): an encrypted chunk.
_FERNET_PREFIX = b"gAAAAA"


class _Cipher:
    """Fernet encryption of raw video at rest (``FERGI_MEDIA_KEY``; comma-separated keys
    are tried in turn, the first encrypts, so a key can be rotated)."""

    def __init__(self, key: str) -> None:
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError:
            raise FergiError(
                "FERGI_MEDIA_KEY is set but the cryptography package is missing: "
                "pip install 'fergi[encryption]'"
            ) from None
        try:
            self._fernet = MultiFernet([Fernet(k.strip().encode()) for k in key.split(",") if k.strip()])
        except (ValueError, TypeError):
            raise FergiError(
                "FERGI_MEDIA_KEY is not a Fernet key (32 url-safe base64-encoded bytes; make one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            ) from None

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def opens(self, token: bytes) -> bool:
        """Whether one of the keys decrypts ``token``."""
        from cryptography.fernet import InvalidToken

        try:
            self._fernet.decrypt(token)
        except (InvalidToken, TypeError, ValueError):
            return False
        return True

    def decrypt(self, data: bytes, where: str) -> bytes:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(data)
        except InvalidToken:
            raise FergiError(
                f"{where}: cannot decrypt the recording chunk: wrong FERGI_MEDIA_KEY "
                "(or the chunk was tampered with)"
            ) from None


#: The key-check value in the media root: a Fernet token of this text under the media key.
KEY_CHECK_NAME = "media_key_check"


_KEY_CHECK_TEXT = b"fergi media key check 1"


def check_media_key(store, *, write: bool = True) -> str | None:
    """Check ``FERGI_MEDIA_KEY`` against the media it will read and write.

    The first start with a key writes a key-check value (``media_key_check``, the
    key's encryption of a fixed text) into the media root. From then on, a start
    without a key, or with a key that cannot decrypt the check value, is refused:
    new video would otherwise be stored in plaintext, or under a key that cannot read
    the video already stored. With a rotated key list (the new key first), any of the
    keys may open it.

    Parameters
    ----------
    store : MediaStore
    write : bool
        Write the check value on a first start with a key (``fergi export`` only reads).

    Returns
    -------
    str or None
        A notice for the person starting the server: a key given for media that hold
        plaintext recordings says which recordings will be encrypted; None otherwise.

    Raises
    ------
    fergi.FergiError
        The media are encrypted and the key is missing or different.
    """
    check = store.root / KEY_CHECK_NAME
    try:
        stored = check.read_bytes().strip() if check.is_file() else None
    except OSError as exc:
        raise FergiError(f"{check}: cannot read the media key check ({exc})") from None
    if stored is not None:
        if store._cipher is None:
            raise FergiError(
                f"--media {store.location}: the media are encrypted ({KEY_CHECK_NAME}); "
                "start with the FERGI_MEDIA_KEY they were encrypted with"
            )
        if not store._cipher.opens(stored):
            raise FergiError(
                f"--media {store.location}: FERGI_MEDIA_KEY is not the key the media were encrypted with "
                f"({KEY_CHECK_NAME} does not decrypt); start with that key (a new key goes first in a "
                "comma-separated list, the old one after it)"
            )
        return None
    # No check value yet: media of an earlier fergi may hold encrypted chunks all the same.
    encrypted, plain = [], []
    for first in store.root.glob("sessions/*/segments/*/chunk_000000.webm"):
        try:
            with first.open("rb") as handle:
                head = handle.read(4096)
        except OSError:
            continue
        (encrypted if head.startswith(_FERNET_PREFIX) else plain).append(first)
    if store._cipher is None:
        if encrypted:
            raise FergiError(
                f"--media {store.location}: {len(encrypted)} recording segment(s) are encrypted "
                f"(e.g. {encrypted[0]}); start with the FERGI_MEDIA_KEY they were encrypted with"
            )
        return None
    for path in encrypted:
        if not store._cipher.opens(path.read_bytes().strip()):
            raise FergiError(
                f"--media {store.location}: FERGI_MEDIA_KEY does not decrypt {path}; start with the key "
                "the media were encrypted with"
            )
        break  # one is enough: a segment is written under the first key
    if write:
        store.write_bytes(check, store._cipher.encrypt(_KEY_CHECK_TEXT))
    if plain:
        sessions = {p.parent.parent.parent.name for p in plain}
        return (
            f"FERGI_MEDIA_KEY is set on media that hold plaintext video: from now on every new recording "
            f"chunk in {store.location} is stored encrypted; the {len(plain)} recording segment(s) of "
            f"{len(sessions)} session(s) already stored stay plaintext (readable with or without the key)"
        )
    return None
