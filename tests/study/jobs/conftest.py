"""Fixtures of the jobs tests: one moto S3 server for the test session, a bucket per test."""

from __future__ import annotations

import pytest

from tests.helpers import study_cluster as cluster


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server, started once (a second or two each time otherwise)."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = cluster.MotoS3()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_s3, monkeypatch):
    """A fresh bucket on the shared server, its endpoint and keys in the environment."""
    for key, value in moto_s3.env.items():
        monkeypatch.setenv(key, value)
    return moto_s3.with_new_bucket()
