"""Prompt creation: structured form -> composed prompt (limited attempts), final prompt."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from fergi.study.content import StructuredInput, form_errors, format_validation_error
from fergi.study.jobs import enqueue
from fergi.study.store import utcnow
from fergi.study.web._deps import DB, CurrentSession, Settings
from fergi.study.web._state import session_state

router = APIRouter(prefix="/api/sessions/{session_id}", tags=["prompts"])

MAX_PROMPT_CHARS = 1000


class GenerateRequest(BaseModel):
    form: dict[str, Any]


class PromptRequest(BaseModel):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)


def _require_prompt_step(sess) -> None:
    if sess.consent_at is None:
        raise HTTPException(409, "consent is needed before the prompt")
    if sess.prompt is not None:
        raise HTTPException(409, "the prompt of this session is already final")


@router.post("/prompt/generate")
def generate_prompt(
    body: GenerateRequest, request: Request, sess: CurrentSession, db: DB, settings: Settings
) -> dict[str, Any]:
    """Compose a prompt from the structured form (Fig. S1-S2); counts one attempt."""

    _require_prompt_step(sess)
    if sess.session_type != "structured":
        raise HTTPException(409, "this is a free-form session: write the prompt yourself")
    if sess.prompt_attempts >= settings.prompt_attempts:
        raise HTTPException(
            429, f"all {settings.prompt_attempts} prompt generations are used: edit the last prompt"
        )
    try:
        form = StructuredInput.model_validate(body.form)
    except ValidationError as exc:
        # ``detail`` as before; ``errors`` say which row and field, in plain words, so the
        # page shows each message next to its row.
        return JSONResponse(
            {"detail": f"structured input: {format_validation_error(exc)}", "code": "invalid_form",
             "errors": form_errors(exc)},
            status_code=422,
        )
    composer = request.app.state.composer
    if hasattr(composer, "compose_detailed"):
        composed = composer.compose_detailed(form)
        text, source = composed.text, composed.source
    else:
        text, source = composer.compose(form), getattr(composer, "kind", "composer")
    sess.prompt_attempts += 1
    sess.structured_input = form.model_dump(mode="json")
    sess.generated_prompts = [*(sess.generated_prompts or []), {"prompt": text, "source": source}]
    db.commit()
    return {
        "prompt": text,
        "source": source,
        "attempts_left": max(0, settings.prompt_attempts - sess.prompt_attempts),
    }


@router.put("/prompt")
def finalize_prompt(body: PromptRequest, sess: CurrentSession, db: DB, settings: Settings) -> dict[str, Any]:
    """Fix the final prompt and start generating the images in the background."""
    text = " ".join(body.prompt.split())
    if sess.prompt is not None and sess.prompt == text:
        return session_state(sess, settings)  # a retried request
    _require_prompt_step(sess)
    if not text:
        raise HTTPException(422, "prompt: write a prompt first")
    if sess.session_type == "structured" and not sess.generated_prompts:
        raise HTTPException(409, "structured session: generate a prompt from the form first")
    sess.prompt = text
    sess.prompt_at = utcnow()
    sess.generator = settings.generator
    enqueue(db, sess.id, "generate")
    db.commit()
    db.refresh(sess)
    return session_state(sess, settings)
