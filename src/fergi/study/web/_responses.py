"""Responses shared by the app and the routers: overload (503), storage full (507), a
stored file."""

from __future__ import annotations

import errno
import logging
import time

from fastapi import HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import exc as sa_exc

from fergi.study.store import REQUEST_DEADLINE, RemotePath, StorePath

logger = logging.getLogger(__name__)

#: Retry-After (seconds) of a 503 when the server is overloaded.
OVERLOAD_RETRY_S = 2


def overloaded_response() -> JSONResponse:
    """``503`` with ``Retry-After``; ``waited_s``: how long the request waited before it."""
    body: dict = {"detail": f"the server is busy; retry in {OVERLOAD_RETRY_S} s"}
    span = REQUEST_DEADLINE.get()
    if span is not None:
        body["waited_s"] = round(time.monotonic() - span[0], 3)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(OVERLOAD_RETRY_S)})


_overloaded = overloaded_response


#: SQLite's SQLITE_FULL and PostgreSQL's disk_full (SQLSTATE 53100).
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"


def is_storage_full(exc: BaseException) -> bool:
    """Whether an error means the disk under the media or the database is full.

    ``ENOSPC``/``EDQUOT`` from a file write, SQLite's ``SQLITE_FULL`` ("database or disk
    is full") and PostgreSQL's ``disk_full`` (wrapped by SQLAlchemy or not).
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL or "database or disk is full" in str(orig):
        return True
    return (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) == _PG_DISK_FULL


def storage_full_response(request: Request, exc: BaseException) -> JSONResponse:
    """``507`` with ``paused`` and ``Retry-After``: the client waits and sends again."""
    where = "database" if isinstance(exc, sa_exc.DBAPIError) else "media"
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0] if where == "database" else exc.strerror
    logger.error("%s storage is full (%s): %s %s refused", where, reason, request.method, request.url.path)
    return JSONResponse(
        {
            "detail": "the study's storage is full: the study is paused on the server side; "
            "keep this page open, nothing you sent before was lost",
            "paused": True,
        },
        status_code=507,
        headers={"Retry-After": "60"},
    )


def file_response(path: StorePath, media_type: str, headers: dict[str, str] | None = None):
    """A FastAPI response with a stored file (images, clip videos: a few MB at most)."""
    if isinstance(path, RemotePath):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise HTTPException(404, f"{path.name} is not in the media store") from None
        return Response(data, media_type=media_type, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


