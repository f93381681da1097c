"""Fixtures of the browser end-to-end tests: Chromium, the fake webcam, a live study server."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from _browser import BASELINE_S, CHROMIUM, N_IMAGES, PRESENT_S


@pytest.fixture(scope="module")
def chromium() -> str:
    ci = os.environ.get("CI", "").lower() == "true"
    problem = None
    if not Path(CHROMIUM).is_file():
        problem = f"Chromium not found at {CHROMIUM} (install it with `apt-get install -y chromium`)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "PyPI playwright is not installed (pip install playwright; never `playwright install`)"
    if problem:
        if ci:
            pytest.fail(problem + "; the browser test is required under CI=true")
        pytest.skip(problem)
    return CHROMIUM


@pytest.fixture(scope="module")
def webcam_y4m(tmp_path_factory) -> Path:
    from skimage import data

    from fergi.face import write_reaction_video

    path = tmp_path_factory.mktemp("webcam") / "face.y4m"
    # Neutral, then a smile: the fake device loops the file for as long as the camera is on.
    return write_reaction_video(path, data.astronaut(), neutral_s=1.0, expression_s=2.0, smile=1.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def study_server(tmp_path):
    """Start the study app with uvicorn on a free port: ``start(**settings) -> (url, app)``."""
    import uvicorn

    from fergi.study import StudySettings, create_app

    servers = []

    def start(**overrides):
        values = {
            "data_dir": tmp_path / "study",
            "admin_token": "e2e-admin",
            "generator": "placeholder",
            "prompt_llm": "template",
            "n_images": N_IMAGES,
            "baseline_s": BASELINE_S,
            "present_s": PRESENT_S,
            "chunk_ms": 500,
            "seed": 0,
            "worker_poll_s": 0.2,
        }
        values.update(overrides)
        app = create_app(StudySettings(**values))
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("the study server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}", app

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def live_server(study_server):
    return study_server()
