"""What the participants see: the structured prompt form, the prompt composers that turn
it into a text prompt, the image generators (on :class:`fergi._registry.Registry`), and
the webcam preview's face check.

Import rule: imports only the shared core (``fergi._errors``, ``fergi._registry``) and
``fergi.study._settings``; no other room. :mod:`~fergi.study.jobs` and
:mod:`~fergi.study.web` import it by the names below.
"""

from fergi.study.content._diffusers import DiffusersGenerator
from fergi.study.content._facecheck import decode_snapshot, face_confidence
from fergi.study.content._forms import (
    MAX_CHARACTERISTICS,
    MAX_ITEM_CHARS,
    MAX_KEYWORDS,
    MAX_NAME_CHARS,
    MAX_OBJECTS,
    MAX_PROMPT_CHARS,
    MAX_QUANTITY,
    MAX_RELATION_CHARS,
    MAX_RELATIONS,
    MAX_TEXT_CHARS,
    AnimateObject,
    EntityRef,
    InanimateObject,
    Relation,
    StructuredInput,
    form_errors,
    format_validation_error,
    parse_structured_input,
    structured_limits,
)
from fergi.study.content._generators import (
    DEFAULT_SD_MODEL,
    FolderGenerator,
    GeneratedImage,
    GeneratorSpec,
    PlaceholderGenerator,
    available_generators,
    create_generator,
    is_black_image,
    prompt_folder_name,
    register_generator,
)
from fergi.study.content._prompting import (
    ComposedPrompt,
    OpenAIPromptComposer,
    TemplatePromptComposer,
    compose_prompt_template,
    create_prompt_composer,
)

__all__ = [
    "DEFAULT_SD_MODEL",
    "MAX_CHARACTERISTICS",
    "MAX_ITEM_CHARS",
    "MAX_KEYWORDS",
    "MAX_NAME_CHARS",
    "MAX_OBJECTS",
    "MAX_PROMPT_CHARS",
    "MAX_QUANTITY",
    "MAX_RELATIONS",
    "MAX_RELATION_CHARS",
    "MAX_TEXT_CHARS",
    "AnimateObject",
    "ComposedPrompt",
    "DiffusersGenerator",
    "EntityRef",
    "FolderGenerator",
    "GeneratedImage",
    "GeneratorSpec",
    "InanimateObject",
    "OpenAIPromptComposer",
    "PlaceholderGenerator",
    "Relation",
    "StructuredInput",
    "TemplatePromptComposer",
    "available_generators",
    "compose_prompt_template",
    "create_generator",
    "create_prompt_composer",
    "decode_snapshot",
    "face_confidence",
    "form_errors",
    "format_validation_error",
    "is_black_image",
    "parse_structured_input",
    "prompt_folder_name",
    "register_generator",
    "structured_limits",
]
