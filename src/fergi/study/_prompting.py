"""Prompt creation for structured-input sessions (paper Supp. A.2.1, Figs. S1-S2).

A participant describes the image they want as objects, relations between them,
a location, a style and keywords. :class:`StructuredInput` validates that form with
the study's rules; a *prompt composer* turns it into one text prompt, which the
participant may then edit:

* the template composer (default) is deterministic and offline;
* the OpenAI-compatible composer asks any ``/chat/completions`` endpoint (the paper
  used gpt-3.5-turbo) and falls back to the template on any failure.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
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
    "ComposedPrompt",
    "EntityRef",
    "InanimateObject",
    "OpenAIPromptComposer",
    "Relation",
    "StructuredInput",
    "TemplatePromptComposer",
    "compose_prompt_template",
    "create_prompt_composer",
    "format_validation_error",
    "parse_structured_input",
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


# --------------------------------------------------------------------------- template

_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()

_IRREGULAR_PLURALS = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "goose": "geese",
    "foot": "feet",
    "tooth": "teeth",
    "ox": "oxen",
    "wolf": "wolves",
    "leaf": "leaves",
    "knife": "knives",
    "wife": "wives",
    "life": "lives",
    "elf": "elves",
    "shelf": "shelves",
    "cactus": "cacti",
    "fungus": "fungi",
}
_SAME_PLURALS = {"sheep", "fish", "deer", "moose", "series", "species", "aircraft", "salmon"}


def _plural(noun: str) -> str:
    """English plural of the last word of ``noun`` (good enough for prompts)."""
    head, _, last = noun.rpartition(" ")
    low = last.lower()
    if low in _SAME_PLURALS or (low.endswith("s") and not low.endswith(("ss", "us", "is"))):
        plural = last  # already plural ("books") or invariant ("sheep")
    elif low in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[low]
        if last[:1].isupper():
            plural = plural.capitalize()
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        plural = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return f"{head} {plural}" if head else plural


def _article(word: str) -> str:
    low = word.lower()
    vowel_sound = low[:1] in "aeiou" and not low.startswith(("uni", "use", "one", "eu"))
    return "an" if vowel_sound or low.startswith(("hour", "honest", "heir")) else "a"


_VOWEL_GROUPS = re.compile(r"[aeiou]+")


_THIRD_PERSON = {"has": "have", "does": "do", "goes": "go", "is": "be", "are": "be"}


def _base_form(verb: str) -> str:
    """``"eats"`` -> ``"eat"``, ``"flies"`` -> ``"fly"`` (a participant may type either)."""
    low = verb.lower()
    if low in _THIRD_PERSON:
        return _THIRD_PERSON[low]
    if len(low) > 4 and low.endswith("ies"):
        return verb[:-3] + "y"
    if len(low) > 3 and low.endswith("s") and not low.endswith(("ss", "us", "is")):
        return verb[:-1]
    return verb


def _gerund(phrase: str) -> str:
    """``"sleep"`` -> ``"sleeping"``, ``"plays guitar"`` -> ``"playing guitar"``."""
    verb, sep, rest = phrase.partition(" ")
    if verb.lower() in {"is", "are", "am"} and rest:  # "is sleeping" -> "sleeping"
        return _gerund(rest)
    verb = _base_form(verb)
    low = verb.lower()
    if not low.isalpha() or low.endswith("ing") or len(low) < 2:
        return verb + sep + rest
    if low.endswith("ie"):
        verb = verb[:-2] + "ying"
    elif low.endswith("e") and not low.endswith(("ee", "ye", "oe")):
        verb = verb[:-1] + "ing"
    elif (
        len(_VOWEL_GROUPS.findall(low)) == 1
        and len(low) >= 3
        and low[-1] not in "aeiouwxy"
        and low[-2] in "aeiou"
        and low[-3] not in "aeiou"
    ):
        verb = verb + verb[-1] + "ing"  # run -> running, sit -> sitting
    else:
        verb = verb + "ing"
    return verb + sep + rest


def _noun_phrase(obj: AnimateObject | InanimateObject) -> str:
    adjectives = " ".join(c for c in obj.characteristics if c)
    noun = obj.name if obj.quantity == 1 else _plural(obj.name)
    words = f"{adjectives} {noun}".strip()
    if obj.quantity == 1:
        return f"{_article(words)} {words}"
    return f"{_NUMBERS[obj.quantity]} {words}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + f", and {items[-1]}"


def compose_prompt_template(form: StructuredInput | dict) -> str:
    """Compose a natural one-sentence prompt from the structured form, offline.

    The sentence follows the paper's example (Fig. S2): ``"An anime cartoon-style
    image depicts a classroom at sunset, with a red bird looking at a flower, a
    furry orange cat sleeping, and two red big books on top of a table."``,
    followed by the keywords (``"... table. highly detailed, night"``), like the
    free-form example of Fig. S3. The result is deterministic.

    Parameters
    ----------
    form : StructuredInput or dict
        The validated form (a dict is validated first).

    Returns
    -------
    str
    """
    form = parse_structured_input(form)
    in_relation = set()
    for rel in (*form.interactional_relations, *form.positional_relations):
        in_relation.add((rel.entity1.kind, rel.entity1.index))
        in_relation.add((rel.entity2.kind, rel.entity2.index))

    clauses = []
    for rel in form.interactional_relations:
        clauses.append(
            f"{_noun_phrase(form.entity(rel.entity1))} {_gerund(rel.relation)} "
            f"{_noun_phrase(form.entity(rel.entity2))}"
        )
    for index, obj in enumerate(form.animate_objects):
        if ("animate", index) not in in_relation:
            phrase = _noun_phrase(obj)
            clauses.append(f"{phrase} {_gerund(obj.activity)}" if obj.activity else phrase)
    for rel in form.positional_relations:
        clauses.append(
            f"{_noun_phrase(form.entity(rel.entity1))} {rel.relation} "
            f"{_noun_phrase(form.entity(rel.entity2))}"
        )
    for index, obj in enumerate(form.inanimate_objects):
        if ("inanimate", index) not in in_relation:
            clauses.append(_noun_phrase(obj))

    style = form.style
    if style:
        style = style.removesuffix(" style").removesuffix("-style").strip()
        lead = f"{style}-style image"
        lead = f"{_article(lead)} {lead}"
    else:
        lead = "an image"
    lead = lead[0].upper() + lead[1:]
    body = _join(clauses)
    if form.location and body:
        sentence = f"{lead} depicts {form.location}, with {body}."
    elif form.location:
        sentence = f"{lead} depicts {form.location}."
    elif body:
        sentence = f"{lead} depicts {body}."
    else:
        sentence = f"{lead}."
    if form.keywords:
        sentence += " " + ", ".join(k for k in form.keywords if k)
    return _clean(sentence)


# --------------------------------------------------------------------------- composers


@dataclass(frozen=True)
class ComposedPrompt:
    """A composed prompt and where it came from.

    Attributes
    ----------
    text : str
        The prompt.
    source : str
        ``"template"`` or ``"llm"``.
    fallback_reason : str or None
        Why the endpoint was not used (``None`` when it was, or for the template).
    """

    text: str
    source: str
    fallback_reason: str | None = None


class TemplatePromptComposer:
    """The deterministic, offline composer (:func:`compose_prompt_template`)."""

    kind = "template"

    def compose(self, form: StructuredInput | dict) -> str:
        """The prompt for ``form``."""
        return compose_prompt_template(form)

    def compose_detailed(self, form: StructuredInput | dict) -> ComposedPrompt:
        """The prompt for ``form`` with its source."""
        return ComposedPrompt(compose_prompt_template(form), "template")


SYSTEM_PROMPT = (
    "You write text prompts for a text-to-image model. Given the structured "
    "description of an image as JSON (animate objects with quantity, optional "
    "activity and characteristics; inanimate objects; interactional and positional "
    "relations between objects; location; style; keywords), write ONE natural "
    "English sentence that describes the image and includes every element, then "
    "append the keywords, comma separated. Answer with the prompt only, no quotes, "
    "no explanation."
)


class OpenAIPromptComposer:
    """Compose prompts with an OpenAI-compatible chat completions endpoint.

    Parameters
    ----------
    base_url : str
        E.g. ``"https://api.openai.com/v1"`` or a local server
        (``"http://127.0.0.1:8000/v1"``); requests go to
        ``{base_url}/chat/completions``.
    model : str
        The model name the endpoint expects (the paper used ``gpt-3.5-turbo``).
    api_key : str, optional
        Sent as ``Authorization: Bearer <key>``.
    timeout : float
        Seconds for the whole request; after that the template is used.
    temperature : float
        Sampling temperature sent to the endpoint.

    Notes
    -----
    Any failure (connection, timeout, HTTP error, malformed or empty answer) logs a
    warning and returns the template prompt, so a participant is never stuck.
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        temperature: float = 0.7,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.temperature = float(temperature)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIPromptComposer(base_url={self.base_url!r}, model={self.model!r})"

    def _request(self, form: StructuredInput, draft: str) -> str:
        import httpx

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        user = (
            "Structured description:\n"
            + json.dumps(form.model_dump(mode="json"), ensure_ascii=False)
            + f"\nA plain draft of the prompt: {draft}"
        )
        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user},
            ],
            "temperature": self.temperature,
        }
        response = httpx.post(
            f"{self.base_url}/chat/completions",
            json=payload,
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
        )
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise RuntimeError("unexpected response (no choices[0].message.content)") from None
        if not isinstance(content, str):
            raise RuntimeError("unexpected response (content is not text)")
        text = _clean(content).strip().strip('"').strip("'").strip()
        if not text:
            raise RuntimeError("empty answer")
        if len(text) > MAX_PROMPT_CHARS:
            raise RuntimeError(f"answer longer than {MAX_PROMPT_CHARS} characters")
        return text

    def compose_detailed(self, form: StructuredInput | dict) -> ComposedPrompt:
        """The prompt for ``form`` with its source (``"llm"`` or ``"template"``)."""
        form = parse_structured_input(form)
        draft = compose_prompt_template(form)
        try:
            return ComposedPrompt(self._request(form, draft), "llm")
        except Exception as exc:  # any endpoint failure falls back, by design
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            logger.warning(
                "prompt endpoint %s/chat/completions failed (%s); using the template prompt",
                self.base_url,
                reason,
            )
            return ComposedPrompt(draft, "template", reason)

    def compose(self, form: StructuredInput | dict) -> str:
        """The prompt for ``form``; the template prompt if the endpoint fails."""
        return self.compose_detailed(form).text


def create_prompt_composer(
    kind: str = "template",
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float = 10.0,
) -> TemplatePromptComposer | OpenAIPromptComposer:
    """Create the prompt composer used by structured-input sessions.

    Parameters
    ----------
    kind : {"template", "openai"}
        ``"template"``: deterministic and offline. ``"openai"``: any
        OpenAI-compatible ``/chat/completions`` endpoint, with the template as
        fallback.
    base_url : str, optional
        Endpoint root for ``"openai"`` (default ``https://api.openai.com/v1``).
    model : str, optional
        Model name for ``"openai"`` (default ``gpt-3.5-turbo``, as in the paper).
    api_key : str, optional
        Key for ``"openai"``; default: the ``OPENAI_API_KEY`` environment variable.
    timeout : float
        Request timeout in seconds.

    Returns
    -------
    object with ``compose(form) -> str`` and ``compose_detailed(form) -> ComposedPrompt``

    Raises
    ------
    fergi.FergiError
        Unknown ``kind`` or a non-positive timeout.
    """
    if kind == "template":
        return TemplatePromptComposer()
    if kind in {"openai", "llm"}:
        if not timeout or timeout <= 0:
            raise FergiError(f"prompt composer: timeout must be positive, got {timeout!r}")
        url = base_url or "https://api.openai.com/v1"
        if not url.startswith(("http://", "https://")):
            raise FergiError(
                f"prompt composer: base URL {url!r} must start with http:// or https://"
            )
        return OpenAIPromptComposer(
            url,
            model or "gpt-3.5-turbo",
            api_key=api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"),
            timeout=timeout,
        )
    raise FergiError(f"prompt composer: unknown kind {kind!r} (choose 'template' or 'openai')")
