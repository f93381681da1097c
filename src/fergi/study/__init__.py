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
  once, in memory): :class:`SegmentDecoder`, :func:`extract_recording_features`.
"""

from fergi.study._app import create_app
from fergi.study._db import make_engine
from fergi.study._export import export_study
from fergi.study._generators import (
    DiffusersGenerator,
    FolderGenerator,
    GeneratedImage,
    PlaceholderGenerator,
    available_generators,
    create_generator,
    is_black_image,
)
from fergi.study._media import assemble_chunks, clip_windows, cut_clips, standardize_video
from fergi.study._pipeline import STAGES, SessionResult, StageError, process_session_media
from fergi.study._prompting import (
    ComposedPrompt,
    OpenAIPromptComposer,
    StructuredInput,
    TemplatePromptComposer,
    compose_prompt_template,
    create_prompt_composer,
    parse_structured_input,
)
from fergi.study._realtime import SegmentDecoder, extract_recording_features
from fergi.study._settings import StudySettings, get_settings
from fergi.study._worker import Worker

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
