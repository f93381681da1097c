"""Shared fixtures. Tests are offline: the public release is read from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.paths import PUBLIC_RELEASE, REPO_ROOT  # noqa: F401  (REPO_ROOT: imported by tests)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `make test` each pytest-xdist worker has a core: a second OpenMP/BLAS thread
    # per worker only spins against the other worker (tests of torch training took twice
    # as long with two). Set before torch or NumPy are imported; subprocesses inherit it.
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")


@pytest.fixture(scope="session")
def fergi_public() -> Path:
    """Path of the authors' public release (a local copy, never downloaded in tests).

    Missing copy: skipped locally, but an error under CI, where it must exist.
    """
    path = Path(os.environ.get("FERGI_TEST_DATA", PUBLIC_RELEASE))
    if not (path / "data").is_dir():
        message = f"public FERGI release not found at {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (required under CI=true)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def release_frames(fergi_public):
    """Every per-frame row of the public release (loaded once per test session)."""
    from fergi.datasets import load_frames

    return load_frames(fergi_public)


@pytest.fixture(scope="session")
def release_clips(release_frames):
    """Activation values of every clip of the public release."""
    from fergi.features import compute_activation_values

    return compute_activation_values(release_frames)


@pytest.fixture(scope="session")
def release_table(fergi_public, release_clips):
    """The per-image table of the public release (2,217 valid reaction clips)."""
    from fergi.datasets import load_images, load_invalid_images
    from fergi.features import image_table

    return image_table(load_images(fergi_public), release_clips, load_invalid_images(fergi_public))


@pytest.fixture(scope="session")
def release_screened_out(release_clips):
    """The participants the paper screens out (baseline AU4): 002, 004 and 039."""
    from fergi.features import screen_participants

    return screen_participants(release_clips)


@pytest.fixture(scope="session")
def paper_tables(release_table, release_screened_out):
    """Tables 1 and 2 of the paper reproduced from the release, without FAU-Net."""
    from fergi.preference import reproduce_paper_tables

    return reproduce_paper_tables(release_table, excluded=release_screened_out, faunet=False)


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL (initdb + pg_ctl on 127.0.0.1) for the test session.

    ``FERGI_TEST_DB_URL`` points at an existing server instead. Skipped, with the reason
    printed by ``-ra``, where the PostgreSQL binaries or psycopg are missing.
    """
    from tests.helpers.services import postgres_missing, throwaway_postgres

    existing = os.environ.get("FERGI_TEST_DB_URL", "")
    if existing.startswith("postgresql"):
        yield existing
        return
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def analyzer():
    """One face analyser (BlazeFace and FaceMesh graphs) for the session.

    Making the MediaPipe graphs is the costly part; with tracking off (the default) the
    analyser keeps nothing from one frame to the next, so the tests can share it.
    """
    from fergi.face import FaceAnalyzer

    with FaceAnalyzer() as shared:
        yield shared


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """Two smile clips and a face-less room video in a study-like folder (``fergi extract``'s
    input in the CLI and Ray tests). Read-only: tests copy it before writing next to it."""
    from tests.helpers.videos import write_study_videos

    return write_study_videos(tmp_path_factory.mktemp("study"))
