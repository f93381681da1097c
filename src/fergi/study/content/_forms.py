"""The structured-input form of the study's sessions (paper Supp. A.2.1, Figs. S1-S2).

A participant describes the image they want as objects, relations between them,
a location, a style and keywords. :class:`StructuredInput` validates that form with
the study's rules; a prompt composer (:mod:`fergi.study.content._prompting`) turns it
into one text prompt.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from fergi._errors import FergiError

logger = logging.getLogger(__name__)

__all__ = [
    "AnimateObject",
    "EntityRef",
    "InanimateObject",
    "Relation",
    "StructuredInput",
    "form_errors",
    "format_validation_error",
    "parse_structured_input",
    "structured_limits",
]

# Limits keep a hostile or accidental submission from producing a prompt the text
# encoder truncates anyway (CLIP sees 77 tokens) or a huge LLM request.
MAX_OBJECTS = 10
MAX_RELATIONS = 10
MAX_QUANTITY = 20
MAX_PROMPT_CHARS = 1000
#: Characters of an object's name, of a relation, of an activity/location/style, and of
#: one characteristic or keyword; items per characteristics and keywords list. The
#: participant's page reads them from ``GET /api/config`` (:func:`structured_limits`),
#: so the form checks exactly what the server does.
MAX_NAME_CHARS = 60
MAX_RELATION_CHARS = 60
MAX_TEXT_CHARS = 100
MAX_ITEM_CHARS = 40
MAX_CHARACTERISTICS = 10
MAX_KEYWORDS = 20

Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_TEXT_CHARS)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_CHARS)]
Item = Annotated[str, StringConstraints(max_length=MAX_ITEM_CHARS)]


def structured_limits() -> dict[str, int]:
    """The structured form's limits, as the participant's page checks them."""
    return {
        "name_chars": MAX_NAME_CHARS,
        "relation_chars": MAX_RELATION_CHARS,
        "text_chars": MAX_TEXT_CHARS,
        "item_chars": MAX_ITEM_CHARS,
        "characteristics": MAX_CHARACTERISTICS,
        "keywords": MAX_KEYWORDS,
        "objects": MAX_OBJECTS,
        "relations": MAX_RELATIONS,
        "quantity": MAX_QUANTITY,
    }


def _split_list(value: Any) -> Any:
    """Accept ``"red, big"`` as well as ``["red", "big"]`` (the form sends either)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple):
        # Non-strings are passed on untouched so validation refuses them (no str() of a dict).
        return [v.strip() if isinstance(v, str) else v for v in value if not isinstance(v, str) or v.strip()]
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(text: str) -> str:
    """Collapse whitespace and drop control characters (a prompt is one line)."""
    return " ".join(_CONTROL.sub(" ", text).split())


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class AnimateObject(_Model):
    """Anything that can do things: people, animals, robots, creatures (Fig. S1a).

    Parameters
    ----------
    name : str
        A noun, e.g. ``"cat"``.
    quantity : int
        How many, 1 to 20.
    activity : str, optional
        What it is doing (a verb, e.g. ``"sleep"``); must be empty for an object
        used in a relation.
    characteristics : list of str
        Adjectives; a comma-separated string is accepted.
    """

    name: Name
    quantity: int = Field(1, ge=1, le=MAX_QUANTITY)
    activity: Text = ""
    characteristics: list[Item] = Field(default_factory=list, max_length=MAX_CHARACTERISTICS)

    _split = field_validator("characteristics", mode="before")(_split_list)


class InanimateObject(_Model):
    """Anything that cannot do things: plants, vehicles, furniture (Fig. S1b)."""

    name: Name
    quantity: int = Field(1, ge=1, le=MAX_QUANTITY)
    characteristics: list[Item] = Field(default_factory=list, max_length=MAX_CHARACTERISTICS)

    _split = field_validator("characteristics", mode="before")(_split_list)


class EntityRef(_Model):
    """A reference to one object of the form: its list and its 0-based position.

    The string forms ``"animate:0"`` and ``"inanimate:2"`` are accepted too.
    """

    kind: Literal["animate", "inanimate"]
    index: int = Field(ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            kind, sep, index = value.partition(":")
            if not sep or not index.strip().isdigit():
                raise ValueError(
                    f"object reference {value!r} must look like 'animate:0' or 'inanimate:1'"
                )
            return {"kind": kind.strip(), "index": int(index)}
        return value

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"


class Relation(_Model):
    """``entity1 <relation> entity2``, e.g. bird *looking at* flower (Figs. S1c-d)."""

    entity1: EntityRef
    entity2: EntityRef
    relation: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_RELATION_CHARS)]


class StructuredInput(_Model):
    """The structured prompt form of paper Figs. S1-S2, with the study's rules.

    Rules (Supp. A.2.1), checked on construction:

    * an interactional relation's entity 1 is an animate object;
    * an animate object in any relation has an empty activity;
    * every object is in at most one relation (interactional or positional);
    * the two entities of a relation are different objects that exist;
    * the form is not empty.

    Validation failures raise :class:`pydantic.ValidationError` whose messages name
    the object by its name (``"interactional relation 1: the animate object 'cat' has
    an activity ('sleep') ..."``); :func:`parse_structured_input` turns them into
    one :class:`~fergi.FergiError` line.

    Examples
    --------
    >>> form = StructuredInput(
    ...     animate_objects=[{"name": "cat", "activity": "sleep", "characteristics": "furry"}],
    ...     location="a garden",
    ... )
    >>> compose_prompt_template(form)
    'An image depicts a garden, with a furry cat sleeping.'
    """

    animate_objects: list[AnimateObject] = Field(default_factory=list, max_length=MAX_OBJECTS)
    inanimate_objects: list[InanimateObject] = Field(default_factory=list, max_length=MAX_OBJECTS)
    interactional_relations: list[Relation] = Field(default_factory=list, max_length=MAX_RELATIONS)
    positional_relations: list[Relation] = Field(default_factory=list, max_length=MAX_RELATIONS)
    location: Text = ""
    style: Text = ""
    keywords: list[Item] = Field(default_factory=list, max_length=MAX_KEYWORDS)

    _split = field_validator("keywords", mode="before")(_split_list)

    def entity(self, ref: EntityRef) -> AnimateObject | InanimateObject:
        """The object a reference points to."""
        objects = self.animate_objects if ref.kind == "animate" else self.inanimate_objects
        return objects[ref.index]

    def describe(self, ref: EntityRef) -> str:
        """``"the animate object 'cat'"``: how messages name an object."""
        return f"the {ref.kind} object {self.entity(ref).name!r}"

    @model_validator(mode="after")
    def _check_rules(self) -> StructuredInput:
        if not (
            self.animate_objects
            or self.inanimate_objects
            or self.location
            or self.style
            or self.keywords
        ):
            raise ValueError("the form is empty: add at least one object, a location or keywords")
        used: dict[tuple[str, int], str] = {}
        groups = (
            ("interactional", self.interactional_relations),
            ("positional", self.positional_relations),
        )
        for group, relations in groups:
            for number, rel in enumerate(relations, start=1):
                where = f"{group} relation {number}"
                for slot, ref in (("entity 1", rel.entity1), ("entity 2", rel.entity2)):
                    objects = (
                        self.animate_objects if ref.kind == "animate" else self.inanimate_objects
                    )
                    if ref.index >= len(objects):
                        raise ValueError(
                            f"{where}: {slot} refers to {ref.kind} object {ref.index + 1}, "
                            f"but only {len(objects)} {ref.kind} object(s) were entered"
                        )
                if (rel.entity1.kind, rel.entity1.index) == (rel.entity2.kind, rel.entity2.index):
                    raise ValueError(
                        f"{where}: entity 1 and entity 2 are both {self.describe(rel.entity1)}; "
                        "choose two different objects"
                    )
                if group == "interactional" and rel.entity1.kind != "animate":
                    raise ValueError(
                        f"{where}: entity 1 must be an animate object (something that can do "
                        f"things), not {self.describe(rel.entity1)}"
                    )
                for ref in (rel.entity1, rel.entity2):
                    obj = self.entity(ref)
                    if isinstance(obj, AnimateObject) and obj.activity:
                        raise ValueError(
                            f"{where}: {self.describe(ref)} has an activity ({obj.activity!r}); "
                            "an animate object can only be in a relation if its activity is empty"
                        )
                    key = (ref.kind, ref.index)
                    if key in used:
                        raise ValueError(
                            f"{where}: {self.describe(ref)} is already in {used[key]}; "
                            "each object can be in at most one relation"
                        )
                    used[key] = where
        return self


def format_validation_error(error: ValidationError) -> str:
    """One readable line from a pydantic error on a :class:`StructuredInput`.

    Field errors are prefixed by where they happened (``animate object 1, name:``);
    rule errors are shown as written.
    """
    labels = {
        "animate_objects": "animate object",
        "inanimate_objects": "inanimate object",
        "interactional_relations": "interactional relation",
        "positional_relations": "positional relation",
    }
    parts = []
    for item in error.errors():
        loc = list(item.get("loc", ()))
        words = []
        while loc:
            head = loc.pop(0)
            if head in labels and loc and isinstance(loc[0], int):
                words.append(f"{labels[head]} {loc.pop(0) + 1}")
            elif isinstance(head, int):
                words.append(f"item {head + 1}")
            else:
                words.append(str(head).replace("_", " "))
        message = str(item.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        parts.append(f"{', '.join(words)}: {message}" if words else message)
    return "; ".join(parts)


_GROUPS = {
    "animate_objects": "animate object",
    "inanimate_objects": "inanimate object",
    "interactional_relations": "interactional relation",
    "positional_relations": "positional relation",
}
_FIELDS = {
    "name": "The name", "activity": "The activity", "relation": "The relation",
    "location": "The location", "style": "The style", "quantity": "The quantity",
    "characteristics": "Characteristics", "keywords": "Keywords",
}
_RULE = re.compile(r"^(interactional|positional) relation (\d+): (.*)$", re.S)


def form_errors(error: ValidationError) -> list[dict[str, Any]]:
    """Where each problem of a structured form is, and what it is in plain words.

    Returns
    -------
    list of dict
        ``{"group", "index", "field", "item", "message"}``: ``group`` is the form's
        list (``"animate_objects"``, ...) or None for a top-level field, ``index`` the
        0-based row, ``field`` the field, ``item`` the 0-based entry of a list field
        (characteristics, keywords); ``message`` a sentence for the participant, e.g.
        ``Characteristic "a very long ..." has 46 characters; at most 40 are allowed.``
    """
    out = []
    for err in error.errors():
        loc = list(err.get("loc", ()))
        group = index = field = item = None
        if loc and loc[0] in _GROUPS:
            group = loc.pop(0)
            if loc and isinstance(loc[0], int):
                index = loc.pop(0)
        if loc and isinstance(loc[0], str):
            field = loc.pop(0)
        if loc and isinstance(loc[0], int):
            item = loc.pop(0)
        kind, ctx, value = err.get("type", ""), err.get("ctx") or {}, err.get("input")
        what = _FIELDS.get(field or "", (field or "This value").replace("_", " ").capitalize())
        if item is not None:
            singular = {"characteristics": "Characteristic", "keywords": "Keyword"}.get(field or "", "Entry")
            what = f"{singular} \u201c{value}\u201d" if isinstance(value, str) else f"{singular} {item + 1}"
        if kind == "string_too_long":
            n = len(value) if isinstance(value, str) else None
            message = (f"{what} has {n} characters; at most {ctx.get('max_length')} are allowed. Please shorten it."
                       if n is not None else f"{what} is too long: at most {ctx.get('max_length')} characters.")
        elif kind == "string_too_short":
            message = f"{what} is empty; please fill it in."
        elif kind == "too_long":
            message = f"{what}: at most {ctx.get('max_length')} entries are allowed."
        elif kind in ("less_than_equal", "greater_than_equal", "int_parsing"):
            message = f"{what} must be a whole number from 1 to {MAX_QUANTITY}."
        else:
            message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            rule = _RULE.match(message)
            if rule and group is None:
                # a rule of the whole form that names its relation
                group, index = f"{rule.group(1)}_relations", int(rule.group(2)) - 1
                message = rule.group(3)
            message = message[:1].upper() + message[1:]
        out.append({"group": group, "index": index, "field": field, "item": item, "message": message})
    return out


def parse_structured_input(data: Any) -> StructuredInput:
    """Validate form data (a dict or JSON text), raising a one-line FergiError.

    Parameters
    ----------
    data : dict, str, or StructuredInput
        The submitted form.

    Returns
    -------
    StructuredInput

    Raises
    ------
    fergi.FergiError
        ``structured input: <what is wrong>``.
    """
    if isinstance(data, StructuredInput):
        return data
    try:
        if isinstance(data, str | bytes):
            return StructuredInput.model_validate_json(data)
        return StructuredInput.model_validate(data)
    except ValidationError as exc:
        raise FergiError(f"structured input: {format_validation_error(exc)}") from None

