"""The study's web app: the FastAPI application, its middleware and dependencies, one
router per resource (sessions, prompts, recording, answers, admin, admin science), and
the participants' and admin's pages (``static/``).

Import rule: the top room. It imports every other room (:mod:`~fergi.study.store`,
:mod:`~fergi.study.protocol`, :mod:`~fergi.study.content`,
:mod:`~fergi.study.processing`, :mod:`~fergi.study.jobs`) by their public names, and
``fergi.study._settings``; nothing in :mod:`fergi.study` imports it but the package's
``__init__``. A router never imports another router: what they share lives in
``_state``, ``_deps`` and ``_responses``.
"""

from fergi.study.web._app import SETTINGS_ENV, STATIC_DIR, app_from_environment, create_app

__all__ = ["SETTINGS_ENV", "STATIC_DIR", "app_from_environment", "create_app"]
