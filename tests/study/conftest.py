"""Fixtures of the study tests: a study app per test (SQLite, or ``FERGI_TEST_DB_URL``), both
database backends, and the synthetic recording shared by the session."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fergi.study import create_app
from tests.helpers import study_cluster
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


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, monkeypatch):
    """Run a test on SQLite and on the session's throwaway PostgreSQL.

    ``make_settings`` reads ``FERGI_TEST_DB_URL``: set to the PostgreSQL URL, or removed.
    """
    if request.param == "postgresql":
        monkeypatch.setenv("FERGI_TEST_DB_URL", request.getfixturevalue("postgres_url"))
    else:
        monkeypatch.delenv("FERGI_TEST_DB_URL", raising=False)
    return request.param


@pytest.fixture(scope="session")
def reaction_webm(tmp_path_factory):
    """A ~5 s VP9 WebM as the browser records it: 2.5 s neutral, then a smile (made once).

    Tests read it and never change it.
    """
    return study_cluster.make_recording(tmp_path_factory.mktemp("reaction") / "recording.webm")
