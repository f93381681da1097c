"""Prompt composition for structured-input sessions (paper Supp. A.2.1, Figs. S1-S2).

A *prompt composer* turns a :class:`StructuredInput` form into one text prompt, which
the participant may then edit:

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

from fergi._errors import FergiError
from fergi.study.content._forms import (
    MAX_PROMPT_CHARS,
    AnimateObject,
    InanimateObject,
    StructuredInput,
    _clean,
    parse_structured_input,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ComposedPrompt",
    "OpenAIPromptComposer",
    "TemplatePromptComposer",
    "compose_prompt_template",
    "create_prompt_composer",
]


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
