"""``fergi serve``: run the web study."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fergi import FergiError
from fergi.cli.score import parse_weights

DESCRIPTION = """\
Run the FERGI web study: participants write a prompt, watch generated images while
their webcam records, rate each image and rank them. The server cuts the baseline and
reaction clips, extracts per-frame AU features and writes preference labels.

With no options it starts on http://127.0.0.1:8000 with an SQLite database and a
media folder in ./fergi-study, the placeholder image generator and template prompts.
On the first start it prints the admin URL with a new token, once; the token is kept
in <data-dir>/admin_token (owner-only) and later starts say where to find it (delete
the file to make a new one; FERGI_ADMIN_TOKEN sets it instead).
Behind a TLS-terminating reverse proxy on the same machine: --behind-proxy (its
X-Forwarded-For/-Proto are believed, the admin cookie is Secure and HSTS is sent);
a proxy elsewhere: --trusted-proxies 10.0.0.5,10.1.0.0/16. Forwarding headers of
anyone else are ignored.
Every option also has an environment variable FERGI_<NAME> (e.g. FERGI_N_IMAGES=5,
FERGI_BASELINE_S=5, FERGI_PRESENT_S=5, FERGI_RETENTION=delete_after_features).
Participants: an open study (the default) starts a session for any participant ID
typed on the start page and registers new IDs; --invitations-only
(FERGI_ALLOW_NEW_PARTICIPANTS=false) refuses IDs the admin did not register.
Invitation links (admin page) bind their ID in either mode: an invited ID is only
opened through its link, typing it is refused; a link opens one session unless
created reusable; IDs the admin page hands out are random. Unfinished sessions count
as abandoned after FERGI_ABANDONED_SESSION_AFTER_MIN minutes idle (default 15).
Upload limits: FERGI_MAX_CHUNK_BYTES, FERGI_MAX_RECORDING_BYTES (per segment),
FERGI_MAX_SESSION_RECORDING_BYTES, FERGI_MAX_SEGMENTS_PER_SESSION,
FERGI_RATE_LIMIT_PER_MINUTE.

With a PostgreSQL --db, this process runs no processing: jobs are queued in
PostgreSQL (procrastinate) and run by `fergi worker` processes on any machines; media
can then live on object storage (--media s3://bucket/prefix, endpoint and keys from
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). FERGI_MEDIA_KEY (a Fernet
key) encrypts raw video at rest.

Examples:
  fergi serve
  fergi serve --host 0.0.0.0 --port 8080 --db postgresql+psycopg://fergi@db/fergi
  fergi serve --db postgresql+psycopg://fergi@db/fergi --media s3://study-media/fergi
  fergi serve --behind-proxy --public-url https://study.example.org
  fergi serve --generator diffusers --generator-option model=CompVis/stable-diffusion-v1-4
  fergi serve --prompt-llm openai --llm-base-url http://127.0.0.1:8001/v1 --llm-model gpt-3.5-turbo
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="run the web study (record reactions, collect ratings and rankings)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--data-dir", help="folder for the default database and media (default ./fergi-study)")
    parser.add_argument("--db", help="database URL (default sqlite:///<data-dir>/study.sqlite3)")
    parser.add_argument("--media", help="media folder for recordings, clips and images (default "
                        "<data-dir>/media), or an object-store URL such as s3://bucket/prefix")
    parser.add_argument(
        "--generator", help="image generator: placeholder (default), diffusers or folder"
    )
    parser.add_argument(
        "--generator-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="generator option, repeatable (e.g. model=PATH, device=cuda, steps=50, path=FOLDER)",
    )
    parser.add_argument("--prompt-llm", choices=("template", "openai"), help="prompt composer for structured sessions (default template)")
    parser.add_argument("--llm-base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    parser.add_argument("--llm-model", help="model name for --prompt-llm openai (default gpt-3.5-turbo)")
    parser.add_argument("--n-images", type=int, help="images per session (default 5)")
    parser.add_argument("--baseline-s", type=float, help="baseline duration in seconds (default 5)")
    parser.add_argument("--present-s", type=float, help="presentation duration in seconds (default 5)")
    parser.add_argument("--scorers", help="baseline scores computed after processing and exported "
                        "(comma-separated, e.g. clip,aesthetic,blip,imagereward,pickscore,hpsv2; "
                        "see `fergi score --help` for their weights)")
    parser.add_argument("--scorer-weights", action="append", default=[], metavar="NAME=PATH",
                        help="weights of one scorer, repeatable (default: the Hugging Face cache)")
    parser.add_argument("--invitations-only", action="store_true",
                        help="only invitation links and IDs the admin registered start a session "
                             "(FERGI_ALLOW_NEW_PARTICIPANTS=false); default: any typed ID that "
                             "has no invitation")
    parser.add_argument("--no-worker", action="store_true", help="do not process in this process")
    parser.add_argument("--queue", choices=("auto", "threads", "procrastinate"),
                        help="who runs processing jobs: auto (default: `fergi worker` processes through "
                        "PostgreSQL when --db is PostgreSQL, threads here with SQLite), threads, procrastinate")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (default 1; one of them runs the worker). Each has its "
                        "own database pool and rate-limit counts")
    parser.add_argument("--public-url", help="the URL participants open (for invitation links and the Origin check)")
    parser.add_argument("--behind-proxy", action="store_true",
                        help="served through a TLS-terminating reverse proxy on this machine: trust its "
                        "X-Forwarded-For/-Proto, Secure admin cookie, HSTS")
    parser.add_argument("--trusted-proxies", metavar="IPS",
                        help="comma-separated proxy addresses or CIDR networks whose X-Forwarded-* "
                        "headers are believed (default: none; 127.0.0.1,::1 with --behind-proxy)")
    return parser


def _option_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def settings_from_args(args, *, keep_admin_token: bool = True):
    """StudySettings from CLI options over environment variables (``fergi serve`` and
    ``fergi worker``; a worker keeps no admin token)."""
    from pydantic import ValidationError

    # deferred: fastapi (the CLI starts fast; only this command needs it)
    from fergi.study import StudySettings

    overrides = {}
    for name, key in (
        ("data_dir", "data_dir"),
        ("db", "db_url"),
        ("media", "media_dir"),
        ("generator", "generator"),
        ("prompt_llm", "prompt_llm"),
        ("llm_base_url", "llm_base_url"),
        ("llm_model", "llm_model"),
        ("n_images", "n_images"),
        ("baseline_s", "baseline_s"),
        ("present_s", "present_s"),
        ("scorers", "scorers"),
        ("queue", "queue"),
        ("estimator", "estimator"),
        ("public_url", "public_url"),
        ("trusted_proxies", "trusted_proxies"),
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "generator_option", None):
        options = {}
        for item in args.generator_option:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise FergiError(f"--generator-option {item!r}: expected KEY=VALUE")
            options[key.strip()] = _option_value(value)
        overrides["generator_options"] = options
    if getattr(args, "scorer_weights", None):
        overrides["scorer_weights"] = {k: v["weights"] for k, v in parse_weights(args.scorer_weights).items()
                                       if "weights" in v}
    if getattr(args, "no_worker", False):
        overrides["worker"] = False
    if getattr(args, "invitations_only", False):
        overrides["allow_new_participants"] = False
    if getattr(args, "behind_proxy", False):
        overrides["behind_proxy"] = True
    try:
        settings = StudySettings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise FergiError(f"setting {where}: {err['msg']}") from None
    if settings.queue == "auto":
        # deferred: fastapi (the CLI starts fast; only this command needs it)
        from fergi.study.jobs import resolve_queue

        settings.queue = resolve_queue(settings)
    if keep_admin_token and "FERGI_ADMIN_TOKEN" not in os.environ:
        settings.admin_token, created = _stored_admin_token(settings.data_dir, settings.admin_token)
        args.admin_token_created = created
    return settings


def _stored_admin_token(data_dir: Path, fresh: str) -> tuple[str, bool]:
    """The admin token kept in <data-dir>/admin_token (created on first start, mode 600),
    so the admin URL survives restarts; and whether it was created now."""

    path = Path(data_dir) / "admin_token"
    try:
        if path.is_file():
            token = path.read_text().strip()
            if token:
                return token, False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(fresh + "\n")
    except OSError as exc:
        raise FergiError(f"{path}: cannot keep the admin token ({exc.strerror})") from None
    return fresh, True


def admin_notice(settings, base: str, created: bool | None) -> str:
    """What `fergi serve` says about the admin page: the token only when it was just made.

    A token printed on every start ends up in every log; it is shown once, and later
    starts say where it is kept.
    """
    if created:
        return (f"fergi study: admin page {base}/admin?token={settings.admin_token}\n"
                f"fergi study: this token is shown once; it is kept in {Path(settings.data_dir) / 'admin_token'}")
    if created is None:
        return f"fergi study: admin page {base}/admin (token: the FERGI_ADMIN_TOKEN environment variable)"
    path = Path(settings.data_dir) / "admin_token"
    return (f"fergi study: admin page {base}/admin (token in {path}; "
            "delete that file and restart for a new one)")


#: Seconds a `--workers N` process may take to answer uvicorn's health check.
WORKER_HEALTHCHECK_S = 60


def uvicorn_options(args, settings) -> dict:
    """Keyword arguments of ``uvicorn.run`` for ``fergi serve``.

    Uvicorn's own proxy-header handling (which believes 127.0.0.1 by default) is off:
    the app believes X-Forwarded-* only from ``settings.trusted_proxies``.
    """
    import inspect

    import uvicorn

    options = {
        "host": args.host,
        "port": args.port,
        "log_level": "info",
        "access_log": False,
        "proxy_headers": False,
    }
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:  # uvicorn >= 0.30
        # With --workers N, uvicorn kills a process whose ping thread has not answered
        # within this time, and every connection it held drops. Under full CPU load (face
        # checks, image generation) its default 5 s kills busy, healthy processes.
        options["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_S
    return options


def _check_port(host: str, port: int) -> None:
    """Refuse a busy port with one line before anything is started."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise FergiError(f"--port {port}: cannot listen on {host} ({exc.strerror})") from None


def run(args) -> int:
    import logging

    import uvicorn

    # deferred: fastapi (the CLI starts fast; only this command needs it)
    from fergi.study import create_app, create_generator

    # deferred: fastapi (the CLI starts fast; only this command needs it)
    from fergi.study.store import redacted_url

    settings = settings_from_args(args)
    _check_port(args.host, args.port)
    # Fail now with one line, not in the worker later, if the generator cannot be built.
    if settings.generator != "diffusers":
        create_generator(settings.generator, **dict(settings.generator_options))
    app = create_app(settings)
    host = args.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = settings.public_url or f"http://{shown}:{args.port}"
    log = logging.getLogger("fergi.serve")
    print(f"fergi study: database {redacted_url(settings.resolved_db_url)}", flush=True)
    if settings.media_url:
        print(f"fergi study: media {settings.media_url}", flush=True)
    else:
        print(f"fergi study: media folder {settings.resolved_media_dir}", flush=True)
    if app.state.store.key_notice:
        print(f"fergi study: {app.state.store.key_notice}", flush=True)
    print(f"fergi study: participants open {base}/", flush=True)
    print(admin_notice(settings, base, getattr(args, "admin_token_created", None)), flush=True)
    log.info("serving on %s:%d", host, args.port)
    if args.workers < 1:
        raise FergiError(f"--workers {args.workers}: must be at least 1")
    try:
        if args.workers > 1:
            # deferred: fastapi (the CLI starts fast; only this command needs it)
            from fergi.study.web import SETTINGS_ENV

            # The processes build their own app (an app object cannot be shared between them).
            app.state.engine.dispose()
            os.environ[SETTINGS_ENV] = settings.model_dump_json()
            uvicorn.run("fergi.study.web:app_from_environment", factory=True, workers=args.workers,
                        **uvicorn_options(args, settings))
        else:
            uvicorn.run(app, **uvicorn_options(args, settings))
    except OSError as exc:
        raise FergiError(f"--port {args.port}: cannot listen on {host} ({exc.strerror})") from None
    return 0
