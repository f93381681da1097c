"""Structured prompt input (Figs. S1-S2) and the prompt composers."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from fergi import FergiError
from fergi.study.content import (
    StructuredInput,
    compose_prompt_template,
    create_prompt_composer,
    format_validation_error,
    parse_structured_input,
)
from tests.helpers.services import free_port

# The example of the paper's Figs. S1-S2
PAPER_FORM = {
    "animate_objects": [
        {"name": "bird", "quantity": 1, "activity": "", "characteristics": "red"},
        {"name": "cat", "quantity": 1, "activity": "sleep", "characteristics": "furry,orange"},
    ],
    "inanimate_objects": [
        {"name": "flower", "quantity": 1},
        {"name": "book", "quantity": 2, "characteristics": "red,big"},
        {"name": "table", "quantity": 1},
    ],
    "interactional_relations": [
        {"entity1": "animate:0", "entity2": "inanimate:0", "relation": "looking at"}
    ],
    "positional_relations": [
        {
            "entity1": {"kind": "inanimate", "index": 1},
            "entity2": "inanimate:2",
            "relation": "on top of",
        }
    ],
    "location": "a classroom at sunset",
    "style": "anime cartoon",
    "keywords": "highly detailed, night",
}


def test_template_reproduces_the_paper_example():
    prompt = compose_prompt_template(PAPER_FORM)
    assert prompt == (
        "An anime cartoon-style image depicts a classroom at sunset, with a red bird "
        "looking at a flower, a furry orange cat sleeping, and two red big books on top "
        "of a table. highly detailed, night"
    )
    # deterministic, and a validated model gives the same text as the dict
    assert compose_prompt_template(StructuredInput.model_validate(PAPER_FORM)) == prompt


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        (
            {"animate_objects": [{"name": "dog", "quantity": 3, "activity": "run"}]},
            "An image depicts three dogs running.",
        ),
        (
            {
                "animate_objects": [{"name": "person", "quantity": 2, "activity": "dance"}],
                "inanimate_objects": [{"name": "umbrella", "characteristics": ["old"]}],
                "location": "a rainy street",
            },
            "An image depicts a rainy street, with two people dancing and an old umbrella.",
        ),
        (
            {
                "animate_objects": [{"name": "child", "quantity": 4, "activity": "play guitar"}],
                "style": "oil painting style",
            },
            "An oil painting-style image depicts four children playing guitar.",
        ),
        ({"location": "a quiet beach", "keywords": ["4k"]}, "An image depicts a quiet beach. 4k"),
        (
            {
                "inanimate_objects": [
                    {"name": "glass box", "quantity": 2},
                    {"name": "fly", "quantity": 2},
                ]
            },
            "An image depicts two glass boxes and two flies.",
        ),
    ],
)
def test_template_sentences(form, expected):
    assert compose_prompt_template(form) == expected


@pytest.mark.parametrize(
    ("activity", "phrase"),
    [
        ("sleep", "sleeping"),
        ("sleeping", "sleeping"),
        ("is sleeping", "sleeping"),
        ("run", "running"),
        ("runs", "running"),
        ("dance", "dancing"),
        ("eats grass", "eating grass"),
        ("flies", "flying"),
        ("lie down", "lying down"),
        ("goes home", "going home"),
        ("swim", "swimming"),
        ("open a door", "opening a door"),
        ("watches TV", "watching TV"),
    ],
)
def test_activities_become_participles(activity, phrase):
    form = {"animate_objects": [{"name": "cat", "activity": activity}]}
    assert compose_prompt_template(form) == f"An image depicts a cat {phrase}."


def _form(**changes):
    form = json.loads(json.dumps(PAPER_FORM))
    form.update(changes)
    return form


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            # the sleeping cat (with an activity) cannot be in a relation
            {
                "positional_relations": [
                    {"entity1": "animate:1", "entity2": "inanimate:2", "relation": "under"}
                ]
            },
            "positional relation 1: the animate object 'cat' has an activity ('sleep'); an animate "
            "object can only be in a relation if its activity is empty",
        ),
        (
            {
                "interactional_relations": [
                    {"entity1": "inanimate:2", "entity2": "animate:0", "relation": "holds"}
                ]
            },
            "interactional relation 1: entity 1 must be an animate object (something that can do "
            "things), not the inanimate object 'table'",
        ),
        (
            # the bird is in the interactional relation already
            {
                "positional_relations": [
                    {"entity1": "inanimate:1", "entity2": "animate:0", "relation": "under"}
                ]
            },
            "positional relation 1: the animate object 'bird' is already in interactional relation 1; "
            "each object can be in at most one relation",
        ),
        (
            {
                "positional_relations": [
                    {"entity1": "inanimate:1", "entity2": "inanimate:1", "relation": "on"}
                ]
            },
            "entity 1 and entity 2 are both the inanimate object 'book'",
        ),
        (
            {
                "positional_relations": [
                    {"entity1": "inanimate:1", "entity2": "inanimate:7", "relation": "on"}
                ]
            },
            "entity 2 refers to inanimate object 8, but only 3 inanimate object(s) were entered",
        ),
        (
            {
                "positional_relations": [
                    {"entity1": "table:1", "entity2": "inanimate:2", "relation": "on"}
                ]
            },
            "positional relation 1, entity1, kind: Input should be 'animate' or 'inanimate'",
        ),
        (
            {"animate_objects": [{"name": "  ", "quantity": 0}]},
            "animate object 1, name: String should have at least 1 character; animate object 1, "
            "quantity: Input should be greater than or equal to 1",
        ),
    ],
)
def test_rule_violations_read_well(changes, message):
    with pytest.raises(FergiError) as info:
        parse_structured_input(_form(**changes))
    text = str(info.value)
    assert text.startswith("structured input: ") and "\n" not in text
    assert message in text
    # the same rules hold when the model is built directly
    with pytest.raises(ValidationError) as info:
        StructuredInput.model_validate(_form(**changes))
    assert message in format_validation_error(info.value)


def test_empty_form_and_extra_fields_are_refused():
    with pytest.raises(FergiError, match="the form is empty"):
        parse_structured_input({})
    with pytest.raises(FergiError, match="colour: Extra inputs are not permitted"):
        parse_structured_input({"location": "x", "colour": "red"})
    with pytest.raises(FergiError, match="structured input: "):
        parse_structured_input("{not json")
    # relations are fine when the animate entity has no activity
    form = parse_structured_input(
        {
            "animate_objects": [{"name": "girl"}, {"name": "dog"}],
            "interactional_relations": [
                {"entity1": "animate:0", "entity2": "animate:1", "relation": "hug"}
            ],
        }
    )
    assert compose_prompt_template(form) == "An image depicts a girl hugging a dog."


# --------------------------------------------------------------------------- LLM endpoint


class _FakeChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that the tests steer."""

    mode = "ok"
    requests: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        mode = type(self).mode
        if mode == "slow":
            time.sleep(1.5)
        if mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        if mode == "garbage":
            payload = {"unexpected": True}
        else:
            payload = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": ' "A red bird gazes at a flower in a sunset classroom." \n',
                        },
                        "finish_reason": "stop",
                    }
                ],
            }
        data = json.dumps(payload).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass


@pytest.fixture
def fake_endpoint():
    _FakeChat.mode = "ok"
    _FakeChat.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeChat)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_composer_uses_the_endpoint(fake_endpoint):
    composer = create_prompt_composer(
        "openai", base_url=fake_endpoint + "/", model="test-model", api_key="sk-test", timeout=5
    )
    result = composer.compose_detailed(PAPER_FORM)
    assert result.text == "A red bird gazes at a flower in a sunset classroom."
    assert result.source == "llm" and result.fallback_reason is None
    (request,) = _FakeChat.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "test-model"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    # the model sees the whole form and the template's draft
    assert '"name": "bird"' in body["messages"][1]["content"]
    assert compose_prompt_template(PAPER_FORM) in body["messages"][1]["content"]
    assert "sk-test" not in repr(composer)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("500", "HTTP 500"), ("garbage", "unexpected response"), ("slow", "Timeout")],
)
def test_openai_composer_falls_back_to_template(fake_endpoint, caplog, mode, reason):
    _FakeChat.mode = mode
    composer = create_prompt_composer("openai", base_url=fake_endpoint, model="m", timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="fergi.study.content._prompting"):
        result = composer.compose_detailed(PAPER_FORM)
    assert result.source == "template"
    assert result.text == compose_prompt_template(PAPER_FORM)
    assert reason in result.fallback_reason
    assert composer.compose(PAPER_FORM) == compose_prompt_template(PAPER_FORM)
    assert any("using the template prompt" in r.getMessage() for r in caplog.records)
    assert len(_FakeChat.requests) >= 1


def test_openai_composer_unreachable_falls_back(caplog):
    # a port nobody listens on: connection refused
    port = free_port()
    composer = create_prompt_composer("openai", base_url=f"http://127.0.0.1:{port}/v1", timeout=2)
    with caplog.at_level(logging.WARNING):
        assert composer.compose(PAPER_FORM) == compose_prompt_template(PAPER_FORM)
    assert any("failed" in r.getMessage() for r in caplog.records)


def test_composer_factory():
    assert create_prompt_composer().compose({"location": "a park"}) == "An image depicts a park."
    with pytest.raises(FergiError, match="unknown kind 'gpt'"):
        create_prompt_composer("gpt")
    with pytest.raises(FergiError, match="must start with http"):
        create_prompt_composer("openai", base_url="ftp://x")
    with pytest.raises(FergiError, match="timeout must be positive"):
        create_prompt_composer("openai", timeout=0)
    # an invalid form is the caller's error, not a fallback
    with pytest.raises(FergiError, match="the form is empty"):
        create_prompt_composer("openai", base_url="http://127.0.0.1:9/v1").compose({})
