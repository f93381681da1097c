"""The FERGI web study: participants write a prompt, watch generated images while the
webcam records, rate and rank them; the server turns the recording into per-frame
features, AU activation values and pairwise preference labels.

Run it with ``fergi serve``; build it in Python with :func:`create_app` (settings in
:class:`StudySettings`, environment variables ``FERGI_*``); write a collected study in
the public release's layout with :func:`export_study` (``fergi export``).

Building blocks, usable on their own:

* image generators: :func:`create_generator` (``placeholder``, ``diffusers``, ``folder``);
* prompt composition for structured sessions: :class:`StructuredInput`,
  :func:`compose_prompt_template`, :func:`create_prompt_composer`;
* media: :func:`assemble_chunks`, :func:`standardize_video`, :func:`cut_clips`;
* processing of a whole recording: :func:`process_session_media` (clips -> features ->
  activations -> labels, with clip files);
* the server's real-time processing (each image while its survey is answered, decoded
  once, in memory): :class:`SegmentDecoder` (from :mod:`fergi.video`),
  :func:`extract_recording_features`; :func:`process_session_media` analyses its clips
  the same way.

The package is six rooms, each with its import rule in its ``__init__``, low to high:
:mod:`~fergi.study.store` (tables and files) and :mod:`~fergi.study.protocol` (session,
segment and event rules), :mod:`~fergi.study.content` (prompt forms, composers,
generators), :mod:`~fergi.study.processing` (the stages, one clip path for live and
offline, the admin science), :mod:`~fergi.study.jobs` (the queue and the worker) and
:mod:`~fergi.study.web` (the app, its routers and pages). ``_settings`` and ``_export``
sit beside them.
"""

from fergi.study._export import export_study
from fergi.study._settings import StudySettings, get_settings
from fergi.study.content import (
    ComposedPrompt,
    DiffusersGenerator,
    FolderGenerator,
    GeneratedImage,
    OpenAIPromptComposer,
    PlaceholderGenerator,
    StructuredInput,
    TemplatePromptComposer,
    available_generators,
    compose_prompt_template,
    create_generator,
    create_prompt_composer,
    is_black_image,
    parse_structured_input,
)
from fergi.study.jobs import Worker
from fergi.study.processing import (
    STAGES,
    SessionResult,
    StageError,
    assemble_chunks,
    clip_windows,
    cut_clips,
    extract_recording_features,
    process_session_media,
    standardize_video,
)
from fergi.study.store import make_engine
from fergi.study.web import create_app
from fergi.video import SegmentDecoder

__all__ = [
    "STAGES",
    "ComposedPrompt",
    "DiffusersGenerator",
    "FolderGenerator",
    "GeneratedImage",
    "OpenAIPromptComposer",
    "PlaceholderGenerator",
    "SegmentDecoder",
    "SessionResult",
    "StageError",
    "StructuredInput",
    "StudySettings",
    "TemplatePromptComposer",
    "Worker",
    "assemble_chunks",
    "available_generators",
    "clip_windows",
    "compose_prompt_template",
    "create_app",
    "create_generator",
    "create_prompt_composer",
    "cut_clips",
    "export_study",
    "extract_recording_features",
    "get_settings",
    "is_black_image",
    "make_engine",
    "parse_structured_input",
    "process_session_media",
    "standardize_video",
]
