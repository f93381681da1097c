"""The FastAPI application of the study: ``create_app(settings)``."""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import exc as sa_exc

from fergi._errors import FergiError
from fergi.study._settings import StudySettings
from fergi.study.content import create_prompt_composer
from fergi.study.jobs import create_worker, open_database
from fergi.study.store import make_sessionmaker, redacted_url, sqlite_file, store_from_settings
from fergi.study.web import (
    _routes_admin,
    _routes_admin_science,
    _routes_answers,
    _routes_prompts,
    _routes_recording,
    _routes_sessions,
)
from fergi.study.web._deps import ADMIN_COOKIE, RateLimiter, is_admin
from fergi.study.web._middleware import MAX_JSON_BYTES, JsonBodyLimit, ResponseHeaders
from fergi.study.web._responses import is_storage_full, overloaded_response, storage_full_response

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")

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
    settings = settings or StudySettings()
    if not settings.media_url:
        # Owner-only before the store (which makes missing folders) touches it.
        media = settings.resolved_media_dir
        try:
            _private_dir(media)
        except OSError as exc:
            raise FergiError(f"--media {media}: cannot create the media folder ({exc.strerror})") from None
    store = store_from_settings(settings)
    # an SQLite URL only: a bare path is no database URL, make_engine reports it
    db_file = sqlite_file(settings.resolved_db_url) if "://" in settings.resolved_db_url else None
    if db_file is not None and not db_file.exists():
        try:
            _private_dir(db_file.parent)
            # Created owner-only before SQLite opens it: its -wal and -shm files copy the mode.
            os.close(os.open(db_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise FergiError(f"--db {db_file}: cannot create the database ({exc.strerror})") from None
    pool = {"pool_size": settings.resolved_pool_size, "pool_timeout": settings.db_pool_timeout}
    engine = open_database(settings, **pool)
    factory = make_sessionmaker(engine)
    worker = create_worker(settings, factory, store)
    dispatcher = worker.dispatcher

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

    for module in (_routes_sessions, _routes_prompts, _routes_recording, _routes_answers, _routes_admin):
        app.include_router(module.router)
    app.include_router(_routes_admin_science.router)

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
        return overloaded_response()

    @app.exception_handler(sa_exc.OperationalError)
    async def database_busy(request: Request, exc: sa_exc.OperationalError):
        if "database is locked" in str(exc.orig):  # SQLite's writer lock, held past busy_timeout
            return overloaded_response()
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
