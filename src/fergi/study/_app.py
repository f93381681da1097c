"""The FastAPI application of the study: ``create_app(settings)``."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from fergi._errors import FergiError
from fergi.study._db import REQUEST_DEADLINE, make_engine, make_sessionmaker
from fergi.study._deps import ADMIN_COOKIE, RateLimiter, is_admin
from fergi.study._settings import StudySettings
from fergi.study._storage import store_from_settings
from fergi.study._worker import Worker

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_JSON_BYTES = 256 * 1024

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(self), microphone=()",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
}


#: Routes that take a raw (non-JSON) body, each with its own streamed size limit.
RAW_BODY_ROUTES = re.compile(r"/recording/[^/]+/chunks/[^/]+/?$|/webcam-check/?$")


#: Control characters no text field may hold (PostgreSQL refuses NUL; the others have
#: no place in a prompt, a name or a note). Tab, newline and carriage return are text.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Retry-After (seconds) of a 503 when the server is overloaded.
OVERLOAD_RETRY_S = 2


def find_control_char(value, where: str = "") -> tuple[str, str] | None:
    """The first control character in a JSON value (keys included): (location, character)."""
    if isinstance(value, str):
        match = CONTROL_CHARS.search(value)
        return None if match is None else (where, match.group())
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        here = f"{where}.{key}" if where else str(key)
        found = find_control_char(key, here) if isinstance(value, dict) else None
        found = found or find_control_char(item, here)
        if found:
            return found
    return None


def _is_json_type(content_type: str) -> bool:
    mime = content_type.split(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


class JsonBodyLimit:
    """ASGI middleware: API bodies must be JSON and at most ``limit`` bytes, and no
    text sent to the API (JSON strings, query parameters, path) holds a control character.

    The limit is enforced on the bytes actually received, so a chunked request without
    Content-Length cannot bypass it. Raw uploads (recording chunks, webcam snapshots)
    are left to their routes, which stream them against their own limits. The control
    characters are refused here, in one place for every route, with 422.
    """

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and "/api/" in scope["path"]:
            from urllib.parse import parse_qsl

            query = scope.get("query_string", b"").decode("latin-1")
            pairs = [("path", scope["path"])] + [
                (f"query.{k}", v) for k, v in parse_qsl(query, keep_blank_values=True)
            ] + [(f"query.{k}", k) for k, _ in parse_qsl(query, keep_blank_values=True)]
            for where, text in pairs:
                found = find_control_char(text, where)
                if found:
                    await self._refuse(send, 422, self._control_message(*found))
                    return
        if (
            scope["type"] != "http"
            or scope["method"] not in ("POST", "PUT", "PATCH", "DELETE")
            or "/api/" not in scope["path"]
            or RAW_BODY_ROUTES.search(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctype = headers.get("content-type", "")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(send, 413, f"request body is {length} bytes; JSON requests are limited to {self.limit}")
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(
                    send, 413, f"request body is over {self.limit} bytes; JSON requests are limited to {self.limit}"
                )
                return
        if body and ctype and not _is_json_type(ctype):
            await self._refuse(send, 415, f"request body must be application/json, not {ctype.split(';')[0].strip()!r}")
            return
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None  # the route's validation answers malformed JSON
            found = find_control_char(parsed)
            if found:
                await self._refuse(send, 422, self._control_message(*found))
                return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _control_message(where: str, char: str) -> str:
        name = f"U+{ord(char):04X}"
        return f"{where or 'body'}: control character {name} is not allowed in text"

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        payload = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


#: The study's umask while it is served: files 0600, folders 0700.
STUDY_UMASK = 0o077


def _private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) owner-only; an existing folder is left as it is."""
    path = Path(path)
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode is reduced by the umask, never widened


def _sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except Exception:
        return None  # make_engine reports it
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser()


#: Environment variable that hands the settings to the processes of ``fergi serve --workers N``.
SETTINGS_ENV = "FERGI_SERVE_SETTINGS"


def _worker_lock(settings: StudySettings):
    """An exclusive lock on ``<data_dir>/worker.lock``, or None when another process holds it."""
    import fcntl

    _private_dir(Path(settings.data_dir))
    path = Path(settings.data_dir) / "worker.lock"
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def app_from_environment() -> FastAPI:
    """The app of one process of ``fergi serve --workers N`` (a uvicorn factory).

    The settings come from the parent as JSON in ``FERGI_SERVE_SETTINGS``; the process
    that takes ``<data_dir>/worker.lock`` first runs the worker, the others only serve
    requests (their jobs are picked up at the worker's next poll).
    """
    settings = StudySettings.model_validate_json(os.environ[SETTINGS_ENV])
    app = create_app(settings)
    app.state.shared_worker = True
    return app


class ResponseHeaders:
    """ASGI middleware: the security headers on every response, ``no-store`` on the API,
    HSTS over HTTPS; and the worker woken when a prompt or ranking queued a job.

    Plain ASGI rather than ``@app.middleware("http")``: it runs for every chunk upload,
    and each such layer costs the event loop a task and a stream per request.
    """

    def __init__(self, app, worker, wait_s: float | None = None) -> None:
        self.app = app
        self.worker = worker
        self.wait_s = wait_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.wait_s is not None:
            # Every wait of this request (a thread, a connection, SQLite's write lock) ends
            # ``db_pool_timeout`` after its arrival: overload is answered 503 by then.
            arrival = time.monotonic()
            REQUEST_DEADLINE.set((arrival, arrival + self.wait_s))
        from starlette.datastructures import MutableHeaders

        # The scheme and path as starlette's URL(scope=scope) has them, without building
        # the whole URL (host header parsing and all) for every chunk.
        scheme, path = scope.get("scheme", "http"), scope["path"]
        status = 0

        async def send_with_headers(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
                if scheme == "https":
                    # Served over TLS (directly, or by a trusted proxy saying so): browsers stay on it.
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
                if path.startswith("/api/"):
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
        # Jobs are queued by prompt and ranking requests: start them without waiting a poll.
        if scope["method"] in ("PUT", "POST") and 0 < status < 300:
            if path.endswith("/prompt"):
                self.worker.wake("generate")
            elif path.endswith("/ranking"):
                self.worker.wake("process")


def redacted_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


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


def create_app(settings: StudySettings | None = None) -> FastAPI:
    """Build the study app.

    Parameters
    ----------
    settings : StudySettings, optional
        Defaults to ``StudySettings()`` (environment variables ``FERGI_*``).

    Returns
    -------
    fastapi.FastAPI
        With ``app.state.settings``, ``engine``, ``sessionmaker``, ``store``,
        ``composer`` and ``worker`` (the worker's threads run while the app is
        served, when ``settings.worker`` is true).

    Examples
    --------
    Embedded in another application under a prefix (pages and API use relative
    URLs); the parent runs the study's lifespan so its worker starts:

    >>> from fastapi import FastAPI
    >>> study = create_app(StudySettings(data_dir="study-data"))  # doctest: +SKIP
    >>> app = FastAPI(lifespan=study.router.lifespan_context)  # doctest: +SKIP
    >>> app.mount("/study", study)  # doctest: +SKIP
    """
    from fergi.study import _queue
    from fergi.study._prompting import create_prompt_composer

    settings = settings or StudySettings()
    if not settings.media_url:
        # Owner-only before the store (which makes missing folders) touches it.
        media = settings.resolved_media_dir
        try:
            _private_dir(media)
        except OSError as exc:
            raise FergiError(f"--media {media}: cannot create the media folder ({exc.strerror})") from None
    store = store_from_settings(settings)
    sqlite_file = _sqlite_file(settings.resolved_db_url)
    if sqlite_file is not None and not sqlite_file.exists():
        try:
            _private_dir(sqlite_file.parent)
            # Created owner-only before SQLite opens it: its -wal and -shm files copy the mode.
            os.close(os.open(sqlite_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise FergiError(f"--db {sqlite_file}: cannot create the database ({exc.strerror})") from None
    pool = {"pool_size": settings.resolved_pool_size, "pool_timeout": settings.db_pool_timeout}
    if _queue.is_postgres(settings.resolved_db_url):
        # a server and workers starting at once must not race to create the tables
        with _queue.schema_lock(settings.resolved_db_url):
            engine = make_engine(settings.resolved_db_url, **pool)
    else:
        engine = make_engine(settings.resolved_db_url, **pool)
    factory = make_sessionmaker(engine)
    dispatcher = None
    if _queue.uses_queue(settings):
        # PostgreSQL: jobs go to `fergi worker` processes (procrastinate); none run here
        dispatcher = _queue.QueueDispatcher(factory, settings.resolved_db_url)
    worker = Worker(factory, settings, store, dispatcher=dispatcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        logger.info("study database: %s", redacted_url(settings.resolved_db_url))
        logger.info("study media: %s", store.location)
        # Face videos, features and the database are for the study's owner only: every
        # file the server (and its worker) creates is 0600, every folder 0700.
        previous_umask = os.umask(STUDY_UMASK)
        # Several server processes (fergi serve --workers N): one of them runs the worker.
        lock = _worker_lock(settings) if getattr(app.state, "shared_worker", False) else None
        if settings.worker and (lock is not None or not getattr(app.state, "shared_worker", False)):
            worker.start()
            if dispatcher is not None:
                logger.info("jobs are run by `fergi worker` processes (procrastinate queue)")
        try:
            yield
        finally:
            worker.stop()
            engine.dispose()
            if lock is not None:
                lock.close()
            os.umask(previous_umask)

    app = FastAPI(
        title="fergi study",
        summary="Facial reactions to generated images, rated and ranked (FERGI study app).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = factory
    app.state.store = store
    app.state.worker = worker
    app.state.rate_limiter = RateLimiter()
    app.state.composer = create_prompt_composer(
        settings.prompt_llm,
        base_url=settings.llm_base_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key,
        timeout=settings.llm_timeout,
    )

    from fergi.study import (
        _routes_admin,
        _routes_answers,
        _routes_prompts,
        _routes_recording,
        _routes_sessions,
    )

    for module in (_routes_sessions, _routes_prompts, _routes_recording, _routes_answers, _routes_admin):
        app.include_router(module.router)
    from fergi.study._routes_admin_science import router as admin_science_router

    app.include_router(admin_science_router)

    # Innermost: the refusals it sends still get the security headers.
    app.add_middleware(JsonBodyLimit, limit=MAX_JSON_BYTES)

    # The next chunk of a segment, served before FastAPI's routing (the route handles the rest).
    app.add_middleware(_routes_recording.ChunkFastPath, study=app)

    app.add_middleware(ResponseHeaders, worker=worker, wait_s=settings.db_pool_timeout)

    proxies = settings.resolved_trusted_proxies
    if proxies:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        # Outermost: the client address (rate limits) and scheme (Secure cookie, HSTS)
        # come from X-Forwarded-For/-Proto only when a trusted proxy sent them.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)

    @app.exception_handler(sa_exc.TimeoutError)
    async def pool_exhausted(_request: Request, _exc: sa_exc.TimeoutError):
        # Every connection is busy for longer than db_pool_timeout: say so at once.
        return _overloaded()

    @app.exception_handler(sa_exc.OperationalError)
    async def database_busy(request: Request, exc: sa_exc.OperationalError):
        if "database is locked" in str(exc.orig):  # SQLite's writer lock, held past busy_timeout
            return _overloaded()
        if is_storage_full(exc):  # the disk under the database: paused, like a full media disk
            return storage_full_response(request, exc)
        raise exc

    @app.exception_handler(OSError)
    async def disk_full(request: Request, exc: OSError):
        if is_storage_full(exc):
            return storage_full_response(request, exc)
        raise exc

    @app.exception_handler(FergiError)
    async def fergi_error(_request: Request, exc: FergiError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        # One readable line per problem instead of pydantic's nested structure.
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query"))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        # The offending input is not echoed: it may be bytes (a non-JSON body) or huge.
        errors = [{k: v for k, v in err.items() if k not in ("input", "url")} for err in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts), "errors": jsonable_encoder(errors)}, status_code=422)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/admin", include_in_schema=False)
    def admin(request: Request, token: str | None = None, denied: int | None = None):
        if token is not None:
            here = str(request.url_for("admin"))
            if not secrets.compare_digest(token.encode(), settings.admin_token.encode()):
                return RedirectResponse(here + "?denied=1", status_code=303)
            # Trade the URL token for an HttpOnly cookie so it leaves the address bar.
            response = RedirectResponse(here, status_code=303)
            response.set_cookie(
                ADMIN_COOKIE,
                token,
                httponly=True,
                samesite="strict",
                max_age=12 * 3600,
                secure=request.url.scheme == "https",
            )
            return response
        if is_admin(request, settings):
            return FileResponse(STATIC_DIR / "admin.html", headers={"Cache-Control": "no-store"})
        html = (STATIC_DIR / "admin_login.html").read_text()
        if denied:
            html = html.replace("<!--denied-->", '<p class="form-error">Wrong admin token.</p>')
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        # On the event loop, not in the thread pool: it answers while every thread is busy.
        return {"status": "ok"}

    return app
