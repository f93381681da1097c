"""Fixtures of the browser end-to-end tests (defined in ``tests/helpers/browser.py``)."""

from tests.helpers.browser import (  # noqa: F401
    browser,
    chromium,
    live_server,
    new_context,
    page,
    playwright,
    study_server,
    webcam_y4m,
)
