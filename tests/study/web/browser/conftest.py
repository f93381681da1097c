"""Fixtures of the browser end-to-end tests (defined in ``_browser.py``)."""

from tests.helpers.browser import chromium, live_server, study_server, webcam_y4m  # noqa: F401
