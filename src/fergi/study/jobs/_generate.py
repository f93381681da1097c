"""The ``generate`` job: the session's images, from its prompt and seed (a part of
:class:`fergi.study.Worker`)."""

from __future__ import annotations

import io
import logging
import secrets
from typing import Any

from sqlalchemy.orm import Session

from fergi.study.content import create_generator
from fergi.study.processing import StageError
from fergi.study.store import Image, Job, StudySession

logger = logging.getLogger(__name__)


class GenerateJobs:
    """The ``generate`` job of :class:`~fergi.study.Worker` (a mixin: it uses the worker's
    ``settings``, ``store`` and ``_stage``)."""

    # ------------------------------------------------------------------ generation
    @property
    def generator(self):
        with self._generator_lock:
            if self._generator is None:
                self._generator = create_generator(
                    self.settings.generator, **dict(self.settings.generator_options)
                )
            return self._generator

    def _base_seed(self, sess: StudySession) -> int:
        if self.settings.seed is not None:
            return (self.settings.seed + 1000 * sess.id) % (2**31 - 1000)
        return secrets.randbelow(2**31 - 1000)

    def _generate(self, db: Session, job: Job) -> None:

        sess = db.get(StudySession, job.session_id)
        on_stage = self._stage(db, job)
        done = {img.index for img in sess.images}
        # A retried job reuses its base seed, so the images it already stored stay consistent.
        base = int((job.stages or {}).get("base_seed") or self._base_seed(sess))
        on_stage("base_seed", base)
        for index in range(1, sess.n_images + 1):
            if index not in done:
                on_stage(f"image_{index}", "queued")

        def store(position: int, result) -> None:
            index = position + 1
            if index in done:
                return
            buffer = io.BytesIO()
            result.image.convert("RGB").save(buffer, format="PNG")
            self.store.write_bytes(self.store.image_path(sess.id, index), buffer.getvalue())
            meta = {k: v for k, v in dict(result.meta or {}).items() if _jsonable(v)}
            db.add(
                Image(
                    session_id=sess.id,
                    index=index,
                    seed=int(result.seed),
                    invalid=bool(result.invalid),
                    meta=meta,
                )
            )
            done.add(index)
            on_stage(f"image_{index}", "invalid" if result.invalid else "done")

        if len(done) < sess.n_images:
            self.generator.generate(sess.prompt, sess.n_images, seed=base, on_image=store)
        missing = sorted(set(range(1, sess.n_images + 1)) - done)
        if missing:
            raise StageError("generate", f"the generator returned no image {missing[0]}")


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)
