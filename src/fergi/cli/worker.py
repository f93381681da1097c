"""``fergi worker``: process the study's jobs taken from a PostgreSQL queue."""

from __future__ import annotations

import argparse

from fergi import FergiError
from fergi.cli.serve import settings_from_args

DESCRIPTION = """\
Run study processing (image generation, real-time clip analysis, labels) for a
`fergi serve` whose database is PostgreSQL. Start any number of workers on any
machines: each takes jobs from the database's queue (procrastinate), a job never
runs twice at once, a failed one is retried, and the jobs of a worker that dies
(killed, machine lost) are picked up by the others once its heartbeat is older than
--stalled-s. The admin page shows the jobs as with the built-in worker.

Give workers the server's database and media, and the same FERGI_* settings that
shape processing (FERGI_BASELINE_S, FERGI_PRESENT_S, FERGI_FPS, FERGI_ESTIMATOR,
FERGI_RETENTION, FERGI_GENERATOR ..., FERGI_MEDIA_KEY when raw video is encrypted).
Media on object storage: --media s3://bucket/prefix with AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; nothing is kept on the worker's disk.

Examples:
  fergi worker --db postgresql+psycopg://fergi:pw@db/fergi --media s3://study-media/fergi
  fergi worker --db postgresql+psycopg://fergi:pw@db/fergi --media /shared/media --concurrency 2
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "worker",
        help="process study jobs from a PostgreSQL queue (for `fergi serve --db postgresql...`)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", help="the study's PostgreSQL URL (postgresql+psycopg://...; or FERGI_DB_URL)")
    parser.add_argument("--media", help="the study's media: a shared folder or s3://bucket/prefix "
                        "(default <data-dir>/media)")
    parser.add_argument("--data-dir", help="folder of the default media (default ./fergi-study)")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once in this process (default 1)")
    parser.add_argument("--estimator", help="AU estimator: geometry (default) or ir50 (as the server's)")
    parser.add_argument("--generator", help="image generator: placeholder (default), diffusers or folder")
    parser.add_argument("--generator-option", action="append", default=[], metavar="KEY=VALUE",
                        help="generator option, repeatable (e.g. model=PATH, device=cuda)")
    parser.add_argument("--baseline-s", type=float, help="baseline duration in seconds (as the server's)")
    parser.add_argument("--present-s", type=float, help="presentation duration in seconds (as the server's)")
    parser.add_argument("--scorers", help="baseline scores after processing (as `fergi serve --scorers`)")
    parser.add_argument("--scorer-weights", action="append", default=[], metavar="NAME=PATH",
                        help="weights of one scorer, repeatable")
    parser.add_argument("--heartbeat-s", type=float, default=10.0,
                        help="seconds between this worker's heartbeats (default 10)")
    parser.add_argument("--stalled-s", type=float, default=30.0,
                        help="a worker without heartbeat for this long is taken as dead and its "
                        "running jobs are retried (default 30)")
    parser.add_argument("--name", help="this worker's name in the queue's tables (default host:pid)")
    return parser


def run(args) -> int:
    # deferred: fastapi (the CLI starts fast; only this command needs it)
    from fergi.study.jobs import create_worker, is_postgres, prepare_database, run_workers

    # deferred: fastapi (the CLI starts fast; only this command needs it)
    from fergi.study.store import make_sessionmaker, redacted_url, store_from_settings

    if args.concurrency < 1:
        raise FergiError(f"--concurrency {args.concurrency}: must be at least 1")
    if args.heartbeat_s <= 0 or args.stalled_s <= args.heartbeat_s:
        raise FergiError("--stalled-s must be longer than --heartbeat-s (both positive)")
    settings = settings_from_args(args, keep_admin_token=False)
    url = settings.resolved_db_url
    if not is_postgres(url):
        raise FergiError(
            f"--db {redacted_url(url)}: `fergi worker` needs the study's PostgreSQL database "
            "(postgresql+psycopg://...); with SQLite, `fergi serve` processes in its own process"
        )
    if settings.generator != "diffusers":
        # deferred: fastapi (the CLI starts fast; only this command needs it)
        from fergi.study import create_generator

        create_generator(settings.generator, **dict(settings.generator_options))
    store = store_from_settings(settings)
    engine = prepare_database(url)
    worker = create_worker(settings, make_sessionmaker(engine), store, dispatch=False)
    print(f"fergi worker: database {redacted_url(url)}", flush=True)
    print(f"fergi worker: media {store.location}", flush=True)
    print(f"fergi worker: {args.concurrency} job(s) at once; stop with Ctrl-C", flush=True)
    try:
        run_workers(
            worker,
            concurrency=args.concurrency,
            heartbeat_s=args.heartbeat_s,
            stalled_s=args.stalled_s,
            sweep_s=min(10.0, args.stalled_s / 2),
            name=args.name,
        )
    finally:
        engine.dispose()
    return 0
