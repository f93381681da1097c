"""The study app's ASGI middleware: JSON body limits and control characters, security
headers, and the worker woken when a request queued a job."""

from __future__ import annotations

import json
import logging
import re
import time

from fergi.study.store import REQUEST_DEADLINE

logger = logging.getLogger(__name__)

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


async def receive_body(receive, limit: int | None = None) -> bytearray | None:
    """A request's body read from ASGI ``receive``; None when the client went away.

    With ``limit``, reading stops as soon as the body is longer than it: the caller sees
    ``len(body) > limit`` and refuses without reading the rest.
    """
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body.extend(message.get("body", b""))
        more = message.get("more_body", False)
        if limit is not None and len(body) > limit:
            break
    return body


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
        body = await receive_body(receive, self.limit)
        if body is None:
            return
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

