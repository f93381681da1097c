"""Settings of the study app (pydantic-settings, environment prefix ``FERGI_``)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Request
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fergi.scorers import list_scorers
from fergi.study.protocol import DEFAULT_CLIP_MIN_FRAME_SHARE

#: Issue options of the annotation survey (Fig. S6), keyed by the release's column names.
DEFAULT_ISSUES: dict[str, str] = {
    "unmentioned_content": "Output contains unwanted content that was not mentioned in the text prompt",
    "repeated_generation": 'Obvious "repeated generation" resulting in unreality',
    "existence_of_body": "Existence of body problem",
    "blurry": "Too blurry to see objects",
    "psychological_discomfort": "Causes psychological discomfort",
    "sexual_content": "Output contains sexual content",
    "violent_content": "Output contains violent content",
    "defamatory_content": "Output contains content that defames certain groups",
}
DEFAULT_EMOTIONS: tuple[str, ...] = (
    "disappointed",
    "satisfied",
    "surprised",
    "disgusted",
    "amused",
    "scared",
)
DEFAULT_CONSENT_TEXT = (
    "In this study you write a text prompt, look at images generated from it and rate them. "
    "Your webcam records your face only while each image is on screen: for every image, a "
    "few seconds of a neutral screen just before it (the baseline), the seconds the image "
    "is shown, and one tenth of a second after it disappears (so that the recording holds "
    "its last moment); the \"Recording\" sign shows the baseline and the image. Nothing else "
    "is recorded: not while you answer the questions, rank the images or write the prompt, "
    "and no sound. "
    "If the camera stops during an image, the image is hidden at once and shown again later, "
    "and the study notes that you saw it before. The video is used to measure facial expressions "
    "(action units) and is stored on the study server only. You can stop at any time by "
    "closing the page. Recording starts only after you agree below."
)
EXAMPLE_PROMPT = "A painting of a dog in the style of Van Gogh. highly detailed, night, dreamy"


class StudySettings(BaseSettings):
    """Everything a lab configures for a study (environment variables ``FERGI_<NAME>``).

    Paths left empty are derived from ``data_dir``: the database is
    ``<data_dir>/study.sqlite3`` and media go to ``<data_dir>/media``.
    """

    model_config = SettingsConfigDict(env_prefix="FERGI_", extra="ignore")

    data_dir: Path = Path("fergi-study")
    db_url: str | None = None
    media_dir: Path | None = None
    # Media on object storage (``s3://bucket/prefix``, through fsspec): FERGI_MEDIA_DIR or
    # --media with a URL lands here; media_options are fsspec's storage options (else the
    # AWS_* variables). media_key (FERGI_MEDIA_KEY): Fernet key(s) that encrypt raw video.
    media_url: str | None = None
    media_options: dict = Field(default_factory=dict)
    media_key: SecretStr | None = None
    admin_token: str = Field(default_factory=lambda: secrets.token_urlsafe(24))
    public_url: str | None = None

    # Image generation and prompt composition.
    generator: str = "placeholder"
    generator_options: dict = Field(default_factory=dict)
    seed: int | None = None
    prompt_llm: Literal["template", "openai"] = "template"
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_timeout: float = 10.0
    prompt_attempts: int = Field(default=3, ge=1, le=20)
    example_prompt: str = EXAMPLE_PROMPT

    # Session design.
    n_images: int = Field(default=5, ge=2, le=20)
    baseline_s: float = Field(default=5.0, gt=0, le=60)
    present_s: float = Field(default=5.0, gt=0, le=60)
    issues: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ISSUES))
    emotions: list[str] = Field(default_factory=lambda: list(DEFAULT_EMOTIONS))
    consent_version: str = "1"
    consent_text: str = DEFAULT_CONSENT_TEXT
    # Open study: a typed participant ID that is not registered yet starts a session and
    # registers it. False (FERGI_ALLOW_NEW_PARTICIPANTS=false, --invitations-only): only
    # invitation links and IDs the admin registered. Either way an ID with an invitation
    # is bound to it: typing it is refused, only its link opens a session.
    allow_new_participants: bool = True
    require_face_check: bool = True
    # An unfinished session without activity for this long counts as abandoned (admin
    # overview); the overview's ?abandoned_after_min= overrides it.
    abandoned_session_after_min: float = Field(default=15.0, gt=0, le=60 * 24 * 365)

    # Processing.
    estimator: str = "geometry"
    annotation_model: Path | None = None
    fps: float = 30.0
    worker: bool = True
    worker_poll_s: float = Field(default=1.0, gt=0)
    max_job_attempts: int = 3
    # A clip with fewer frames than this share of its window (duration x fps) is invalid:
    # the camera stopped or froze during it.
    clip_min_frame_share: float = Field(default=DEFAULT_CLIP_MIN_FRAME_SHARE, gt=0, le=1)
    # ... and so is a clip in which the camera delivered no new frame for longer than this.
    clip_max_still_s: float = Field(default=1.0, gt=0)
    # Who runs jobs: "procrastinate" = `fergi worker` processes through a PostgreSQL
    # queue (this process only enqueues); "threads" = this process. "auto": `fergi serve`
    # picks procrastinate for a PostgreSQL database, an embedded app keeps threads.
    queue: Literal["auto", "threads", "procrastinate"] = "auto"
    retention: Literal["keep", "delete_after_features"] = "keep"
    # Baseline scores (`fergi score`) of each session's images, computed after processing
    # and exported in the release's score columns: comma-separated scorer names (empty:
    # none) and, per scorer, its weights (default: the Hugging Face cache).
    scorers: str = ""
    scorer_weights: dict[str, str] = Field(default_factory=dict)

    # Upload limits.
    max_chunk_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_recording_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)  # per segment
    max_session_recording_bytes: int = Field(default=4 * 1024 * 1024 * 1024, gt=0)
    # One segment per image (baseline and presentation), and a new one for each replay
    # after a camera interruption or a refused stream start: 20 images x 10 attempts.
    max_segments_per_session: int = Field(default=200, ge=1)
    # An incomplete segment without an upload for this long can never complete: it no
    # longer holds up retention, and its late chunks are refused.
    abandoned_segment_after_s: float = Field(default=3600.0, gt=0)
    max_snapshot_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    chunk_ms: int = Field(default=1000, ge=100, le=10000)
    rate_limit_per_minute: int = Field(default=600, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _media_url_from_dir(cls, values):
        # `--media s3://...` / FERGI_MEDIA_DIR=s3://...: a URL, not a folder (a Path
        # would fold its "//")
        if isinstance(values, dict):
            media = values.get("media_dir")
            if isinstance(media, str) and "://" in media and not media.startswith("file://"):
                values = {**values, "media_url": media, "media_dir": None}
        return values

    # Deployment.
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (IP addresses
    # or CIDR networks); anyone else's are ignored, so a client cannot pick its own address
    # for the rate limits. Empty: none, unless ``behind_proxy`` (then the loopback).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Served through a TLS-terminating reverse proxy on this machine.
    behind_proxy: bool = False
    # Database connections of this process: None derives it from the threads that can
    # use one at once (see ``resolved_pool_size``). A request that waits longer than
    # ``db_pool_timeout`` for one is answered 503 with Retry-After.
    db_pool_size: int | None = Field(default=None, ge=1, le=1000)
    db_pool_timeout: float = Field(default=5.0, gt=0, le=120)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value):
        # FERGI_TRUSTED_PROXIES=10.0.0.1,10.1.0.0/16 as well as a JSON list
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            value = [v.strip() for v in text.split(",") if v.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @property
    def resolved_trusted_proxies(self) -> list[str]:
        """The proxies whose forwarding headers are believed."""
        if self.trusted_proxies:
            return list(self.trusted_proxies)
        return ["127.0.0.1", "::1"] if self.behind_proxy else []

    @property
    def resolved_pool_size(self) -> int:
        """Connections this process may open: one per thread that can hold one at once.

        Requests run in the server's thread pool (40 threads, anyio's default) and the
        worker has one thread per job kind plus its warm-up, so 40 + 4 + 2 spare: a
        request then never waits for a connection another request's thread could not
        release. With PostgreSQL, ``max_connections`` must exceed the number of server
        processes times this.
        """
        return self.db_pool_size or 46

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in list_scorers()]
        if unknown:
            raise ValueError(f"unknown scorer {unknown[0]!r} (choose from {', '.join(list_scorers())})")
        return ",".join(names)

    @field_validator("emotions")
    @classmethod
    def _emotions_nonempty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one emotion option is needed")
        return value

    @property
    def resolved_db_url(self) -> str:
        """The SQLAlchemy URL of the study database."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'study.sqlite3').resolve()}"

    @property
    def media_location(self) -> str | Path:
        """The media URL (object storage) or the resolved media folder."""
        return self.media_url or self.resolved_media_dir

    @property
    def resolved_media_dir(self) -> Path:
        """The folder that holds recordings, clips, features and generated images."""
        return (self.media_dir or self.data_dir / "media").resolve()


async def get_settings(request: Request) -> StudySettings:
    """FastAPI dependency: the settings the app was created with (override in tests).

    A coroutine, so resolving it costs no trip through the thread pool.
    """
    return request.app.state.settings
