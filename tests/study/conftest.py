"""Fixtures of the study tests: one study app on SQLite (or ``FERGI_TEST_DB_URL``) per test."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fergi.study import create_app
from tests.helpers.study import make_settings


@pytest.fixture
def app(tmp_path):
    """A fresh study app (no background worker; tests run its jobs with ``run_pending``)."""
    return create_app(make_settings(tmp_path))


@pytest.fixture
def client(app):
    """A ``TestClient`` on ``app``, its lifespan started and stopped around the test."""
    with TestClient(app) as test_client:
        yield test_client
