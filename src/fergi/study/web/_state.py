"""What the routers share: where a participant is in the flow (the client resumes from it
after a reload) and the participant id rule. Not a router: routers import it, never each
other."""

from __future__ import annotations

import re
from typing import Any

from fergi.study._settings import StudySettings
from fergi.study.store import StudySession

#: A participant id: letters, digits, ``_`` and ``-``, at most 32, not starting with a symbol.
PARTICIPANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def session_state(sess: StudySession, settings: StudySettings) -> dict[str, Any]:
    """Where the participant is in the flow; the client resumes from this after a reload."""
    answered = {a.image_index for a in sess.answers}
    current = next((i for i in range(1, sess.n_images + 1) if i not in answered), None)
    phase = None
    if sess.consent_at is None:
        step = "consent"
    elif sess.prompt is None:
        step = "prompt"
    elif sess.webcam_ok_at is None:
        step = "webcam"
    elif current is not None:
        step = "images"
        hidden = any(e.kind == "image_hidden" and e.image_index == current for e in sess.events)
        phase = "survey" if hidden else "present"
    elif sess.ranking is None:
        step = "ranking"
    else:
        step = "done"
    ready = sorted(img.index for img in sess.images)
    jobs = {job.kind: job for job in sess.jobs}
    gen = jobs.get("generate")
    return {
        "session_id": sess.id,
        "participant_id": sess.participant_id,
        "session_index": sess.index,
        "session_type": sess.session_type,
        "n_images": sess.n_images,
        "step": step,
        "current_image": current,
        "image_phase": phase,
        "share_video": sess.share_video,
        "prompt": sess.prompt,
        "generated_prompts": list(sess.generated_prompts or []),
        "attempts_left": max(0, settings.prompt_attempts - sess.prompt_attempts),
        "images_ready": ready,
        "images_invalid": sorted(img.index for img in sess.images if img.invalid),
        "generation": None if gen is None else {"status": gen.status, "error": gen.error},
        "next_segment": len(sess.segments),
        "answered": sorted(answered),
        "ranking": None if sess.ranking is None else list(sess.ranking.order),
    }
