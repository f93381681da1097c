"""FastAPI dependencies shared by the routers: database, auth, rate limits."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from fergi.study._settings import StudySettings, get_settings
from fergi.study.store import MediaStore, StudySession, hash_token

logger = logging.getLogger(__name__)

SESSION_HEADER = "X-Session-Token"
ADMIN_COOKIE = "fergi_admin"
#: Largest integer a client may send for an id or index: the databases' 32-bit INTEGER.
MAX_DB_INT = 2**31 - 1


def get_db(request: Request) -> Iterator[Session]:
    """One database session per request."""
    with request.app.state.sessionmaker() as db:
        yield db


async def get_store(request: Request) -> MediaStore:
    return request.app.state.store


Settings = Annotated[StudySettings, Depends(get_settings)]
DB = Annotated[Session, Depends(get_db)]
Store = Annotated[MediaStore, Depends(get_store)]


class RateLimiter:
    """Sliding one-minute window of requests per key (a session token or a client address)."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int) -> None:
        now = time.monotonic()
        with self._lock:
            window = self._hits.setdefault(key, deque())
            while window and now - window[0] > 60.0:
                window.popleft()
            if len(window) >= limit:
                retry = max(1, int(60.0 - (now - window[0])) + 1)
                raise HTTPException(
                    429,
                    f"too many requests: the limit is {limit} per minute; retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
            window.append(now)
            if len(self._hits) > 50_000:  # forget idle keys so memory stays bounded
                for stale in [k for k, v in self._hits.items() if not v or now - v[-1] > 60.0]:
                    del self._hits[stale]


def rate_limit(request: Request, settings: Settings) -> None:
    """Per-client-address limit (session creation).

    Keyed by the address, never by a header the client chooses: a fresh made-up
    token per request would otherwise get a fresh allowance every time.
    """
    key = "addr:" + (request.client.host if request.client else "?")
    request.app.state.rate_limiter.hit(key, settings.rate_limit_per_minute)


def get_study_session(
    request: Request,
    db: DB,
    settings: Settings,
    session_id: Annotated[int, Path(ge=1, le=MAX_DB_INT)],
) -> StudySession:
    """The participant session named in the path, opened by its token (header X-Session-Token)."""
    token = request.headers.get(SESSION_HEADER)
    if not token:
        raise HTTPException(401, f"missing {SESSION_HEADER} header: every session request needs its token")
    sess = db.scalar(select(StudySession).where(StudySession.token_hash == hash_token(token)))
    # Same answer for an unknown session and a wrong token: ids are not secrets, tokens are.
    if sess is None or sess.id != session_id:
        # Made-up tokens count against the client's address, not a fresh key each.
        rate_limit(request, settings)
        raise HTTPException(403, f"this token does not open session {session_id}")
    request.app.state.rate_limiter.hit(token, settings.rate_limit_per_minute)
    # End the read transaction: the connection goes back to the pool while the request
    # waits for a thread to run its route (sess stays loaded: expire_on_commit=False).
    db.commit()
    return sess


CurrentSession = Annotated[StudySession, Depends(get_study_session)]


def _header_admin_token(request: Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("X-Admin-Token")


def admin_token_from(request: Request) -> str | None:
    return _header_admin_token(request) or request.cookies.get(ADMIN_COOKIE)


def is_admin(request: Request, settings: StudySettings) -> bool:
    token = admin_token_from(request)
    return bool(token) and secrets.compare_digest(token.encode(), settings.admin_token.encode())


def _origin_of(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


def own_origins(request: Request, settings: StudySettings) -> set[str]:
    """The origins the study is served from: the request's own, and ``public_url``'s."""
    origins = {f"{request.url.scheme}://{request.url.netloc}".lower()}
    if settings.public_url:
        origins.add(_origin_of(settings.public_url))
    return origins


def check_origin(request: Request, settings: StudySettings) -> None:
    """Refuse a state-changing admin request sent by another site (CSRF).

    The browser's ``Origin`` (or ``Sec-Fetch-Site``, or the ``Referer``'s origin) must
    be the study's own. A request with none of them is a non-browser client: allowed
    with a token in a header, refused when only the cookie authenticates it.
    """
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    refused = HTTPException(403, "cross-origin admin request refused: use the admin page of this server")
    origin = request.headers.get("origin")
    # "null" is sent for same-origin requests under a no-referrer policy: Sec-Fetch-Site decides.
    if origin and origin != "null":
        if _origin_of(origin) not in own_origins(request, settings):
            raise refused
        return
    site = request.headers.get("sec-fetch-site")
    if site:
        if site not in ("same-origin", "none"):
            raise refused
        return
    referer = request.headers.get("referer")
    if referer:
        if _origin_of(referer) not in own_origins(request, settings):
            raise refused
        return
    if _header_admin_token(request) is None:
        raise refused


def require_admin(request: Request, settings: Settings) -> None:
    """Admin API guard: Bearer token, X-Admin-Token header or the admin cookie; a
    state-changing request must also come from the study's own pages (``check_origin``)."""
    if admin_token_from(request) is None:
        raise HTTPException(401, "admin token required (Authorization: Bearer <token>)")
    if not is_admin(request, settings):
        raise HTTPException(403, "wrong admin token")
    check_origin(request, settings)


#: Token hashes already seen to open their session: an upload's early check is then free.
#: Only the early check uses it; the route itself checks the database again.
_KNOWN_TOKENS_MAX = 100_000


def _known_tokens(request: Request) -> dict[str, int]:
    return _known_tokens_of(request.app.state)


def _known_tokens_of(state) -> dict[str, int]:
    if getattr(state, "known_tokens", None) is None:
        state.known_tokens = {}
    return state.known_tokens


def _token_opens(request: Request, session_id: int) -> bool:
    digest = hash_token(request.headers.get(SESSION_HEADER, ""))
    known = _known_tokens(request)
    # A short session of its own: closed again before the body is read.
    with request.app.state.sessionmaker() as db:
        found = db.scalar(select(StudySession.id).where(StudySession.token_hash == digest))
    if found is not None:
        if len(known) >= _KNOWN_TOKENS_MAX:
            known.clear()
        known[digest] = found
    return found == session_id


async def read_upload(request: Request, settings: StudySettings, session_id: int, limit: int, what: str) -> bytes:
    """The raw body of an upload, read before any database connection is held.

    A client sends its body at its own pace (a phone on a slow network, or an attacker
    trickling bytes): no connection of the pool waits for it. The token is checked
    first, with a connection taken and returned at once, so strangers cannot make the
    server read their uploads.
    """
    from starlette.concurrency import run_in_threadpool

    if not request.headers.get(SESSION_HEADER):
        raise HTTPException(401, f"missing {SESSION_HEADER} header: every session request needs its token")
    known = _known_tokens(request).get(hash_token(request.headers[SESSION_HEADER])) == session_id
    if not known and not await run_in_threadpool(_token_opens, request, session_id):
        rate_limit(request, settings)
        raise HTTPException(403, f"this token does not open session {session_id}")
    return await read_body_limited(request, limit, what)


async def read_body_limited(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPException(413, f"{what} is {int(declared)} bytes; the limit is {limit}")
        except ValueError:
            raise HTTPException(400, "invalid Content-Length header") from None
    from starlette.requests import ClientDisconnect

    data = bytearray()
    try:
        async for part in request.stream():
            data.extend(part)
            if len(data) > limit:
                raise HTTPException(413, f"{what} is larger than the limit of {limit} bytes")
    except ClientDisconnect:
        # A participant closing the page mid-upload is normal: one line, no traceback.
        # Nothing was stored; the client sends the whole body again if it comes back.
        logger.info("%s %s: the client disconnected after %d bytes of %s; nothing stored",
                    request.method, request.url.path, len(data), what)
        raise HTTPException(400, f"{what}: the upload was interrupted") from None
    return bytes(data)
