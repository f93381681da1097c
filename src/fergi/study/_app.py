"""The FastAPI application of the study: ``create_app(settings)``."""

from __future__ import annotations

import json
import logging
import re
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import make_url

from fergi._errors import FergiError
from fergi.study._db import make_engine, make_sessionmaker
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


def _is_json_type(content_type: str) -> bool:
    mime = content_type.split(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


class JsonBodyLimit:
    """ASGI middleware: API bodies must be JSON and at most ``limit`` bytes.

    The limit is enforced on the bytes actually received, so a chunked request without
    Content-Length cannot bypass it. Raw uploads (recording chunks, webcam snapshots)
    are left to their routes, which stream them against their own limits.
    """

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
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
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

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


def redacted_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


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
    store = store_from_settings(settings)
    if _queue.is_postgres(settings.resolved_db_url):
        # a server and workers starting at once must not race to create the tables
        with _queue.schema_lock(settings.resolved_db_url):
            engine = make_engine(settings.resolved_db_url)
    else:
        engine = make_engine(settings.resolved_db_url)
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
        if settings.worker:
            worker.start()
            if dispatcher is not None:
                logger.info("jobs are run by `fergi worker` processes (procrastinate queue)")
        try:
            yield
        finally:
            worker.stop()
            engine.dispose()

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

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.middleware("http")
    async def wake_worker(request: Request, call_next):
        response = await call_next(request)
        # Jobs are queued by prompt and ranking requests: start them without waiting a poll.
        if request.method in ("PUT", "POST") and response.status_code < 300:
            path = request.url.path
            if path.endswith("/prompt"):
                worker.wake("generate")
            elif path.endswith("/ranking"):
                worker.wake("process")
        return response

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
            response.set_cookie(ADMIN_COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600)
            return response
        if is_admin(request, settings):
            return FileResponse(STATIC_DIR / "admin.html", headers={"Cache-Control": "no-store"})
        html = (STATIC_DIR / "admin_login.html").read_text()
        if denied:
            html = html.replace("<!--denied-->", '<p class="form-error">Wrong admin token.</p>')
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
