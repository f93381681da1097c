"""Fixtures and helpers shared by the browser end-to-end tests.

``tests/study/web/browser/conftest.py`` makes the fixtures available to the browser
tests. One Playwright driver and one Chromium (its fake webcam playing ``webcam_y4m``)
serve all of them: each test opens its own browser context (cookies, storage
and camera of its own) and closes it, so tests stay independent without paying a
browser start-up each. Tests that need other launch flags (no camera device, a real
permission prompt) call :func:`launch` on the shared driver.

Every check of a state the page may still be changing waits for it (Playwright's
``expect``); ``EXPECT_TIMEOUT_MS`` is their default patience, sized for a busy machine.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.helpers.study import serve

CHROMIUM = os.environ.get("FERGI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
BASELINE_S = 2.0
PRESENT_S = 2.0
N_IMAGES = 5
FPS = 30
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
]
#: How much later than set a starved renderer may paint a stage change (a timer and a
#: frame, each late on a machine whose cores are all busy; 0.18 s seen under a burner).
LATE_PAINT_S = 0.4
#: How long an ``expect(...)`` waits by default (Playwright's own 5 s is short under load).
EXPECT_TIMEOUT_MS = 20_000


def wait_for_processing(app, timeout: float = 600):
    """The session's "process" job once it is done or failed (None if never queued)."""
    from sqlalchemy import select

    from fergi.study.store import Job

    deadline = time.monotonic() + timeout
    while True:
        with app.state.sessionmaker() as db:
            job = db.scalar(select(Job).where(Job.kind == "process"))
            if job is not None and job.status in ("done", "failed") or time.monotonic() > deadline:
                return job
        time.sleep(1)


def wait_for(page, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression until it is truthy."""
    # page.wait_for_function evaluates strings in the page, which the app's CSP forbids.
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {expression}")
        time.sleep(0.1)


RANK_ORDER_JS = "[...document.querySelectorAll('#rank-list li')].map((e) => Number(e.dataset.image))"


def wait_for_order(page, order: list[int], timeout: float = 20.0) -> None:
    """Wait until the ranking list shows ``order`` (images, best first); fail naming the last order seen."""
    deadline = time.monotonic() + timeout
    while (seen := page.evaluate(RANK_ORDER_JS)) != list(order):
        if time.monotonic() > deadline:
            raise AssertionError(f"the ranking shows {seen} after {timeout:g} s, not {list(order)}")
        time.sleep(0.1)


class Shots:
    """Screenshots of every step when FERGI_E2E_SCREENSHOTS=DIR is set."""

    def __init__(self, page, prefix: str = ""):
        folder = os.environ.get("FERGI_E2E_SCREENSHOTS")
        self.folder = Path(folder) if folder else None
        self.page = page
        self.prefix = prefix
        self.n = 0
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        if self.folder:
            self.n += 1
            path = self.folder / f"{self.prefix}{self.n:02d}_{name}.png"
            self.page.screenshot(path=str(path), full_page=True)


def fill_structured_form(page) -> None:
    for name, activity, traits in (("cat", "sleep", "furry, orange"), ("bird", "", "red")):
        page.fill("#an-name", name)
        page.fill("#an-act", activity)
        page.fill("#an-char", traits)
        page.click("#an-add")
    for name, quantity, traits in (("flower", 1, ""), ("book", 2, "red, big"), ("table", 1, "")):
        page.fill("#in-name", name)
        page.fill("#in-qty", str(quantity))
        page.fill("#in-char", traits)
        page.click("#in-add")
    from playwright.sync_api import expect

    # The sleeping cat has an activity, so only the bird can be entity 1.
    expect(page.locator("#ir-e1 option", has_text="bird (animate)")).to_have_count(1)
    options = page.locator("#ir-e1 option").all_inner_texts()
    assert not any(o.startswith("cat") for o in options), options
    page.select_option("#ir-e1", label="bird (animate)")
    page.select_option("#ir-e2", label="flower (inanimate)")
    page.fill("#ir-rel", "looking at")
    page.click("#ir-add")
    page.select_option("#pr-e1", label="2 × book (inanimate)")
    page.select_option("#pr-e2", label="table (inanimate)")
    page.fill("#pr-rel", "on top of")
    page.click("#pr-add")
    page.fill("#ot-loc", "a classroom at sunset")
    page.fill("#ot-style", "anime cartoon")
    page.fill("#ot-kw", "highly detailed, warm light")


def answer_survey(page, index: int, shots, n_images: int = N_IMAGES) -> None:
    """Fill and send the survey of image ``index`` (waits for it to appear)."""
    from playwright.sync_api import expect

    page.wait_for_selector("#page-survey:not([hidden])", timeout=60_000)
    # The counter is filled in as the survey opens: wait for it, never read it once.
    expect(page.locator("#survey-counter")).to_have_text(
        f"Image {index} of {n_images}", ignore_case=True, use_inner_text=True
    )
    page.fill("#missing", "warm light" if index % 2 else "")
    for name, stars in (("overall_rating", index), ("alignment_rating", 8 - index), ("fidelity_rating", 4)):
        page.click(f"label[for={name}-{stars}]")
    page.check(f"#issues-box input[value={'blurry' if index % 2 else 'repeated_generation'}]")
    page.click(f"#emotions-box label:has(input[value={'amused' if index < 3 else 'surprised'}])")
    if index == 1:
        shots("survey")
    page.click("#survey-submit")
    page.wait_for_selector("#page-survey", state="hidden", timeout=60_000)


def start_and_consent(page, base: str, participant: str, shots=None, *, share: bool = False) -> None:
    """From the start page through the consent (sharing the video too with ``share``):
    a prompt page comes next."""
    shots = shots or (lambda name: None)
    page.goto(base + "/")
    page.wait_for_selector("#page-start:not([hidden])")
    page.fill("#participant-id", participant)
    shots("start")
    page.click("#start-button")
    page.wait_for_selector("#page-consent:not([hidden])")
    page.check("#consent-agree")
    if share:
        page.check("#consent-share")
    shots("consent")
    page.click("#consent-button")


def short_structured_prompt(page, shots=None) -> None:
    """On the structured prompt page: one cat, the prompt generated, then Continue."""
    page.fill("#an-name", "cat")
    page.click("#an-add")
    page.click("#generate-prompt")
    page.wait_for_selector("#generated-block:not([hidden])")
    (shots or (lambda name: None))("structured")
    page.click("#structured-continue")


def begin_study(page, base: str, participant: str, shots=None) -> None:
    """From the start page to the first image: a short structured prompt, the camera check."""
    shots = shots or (lambda name: None)
    start_and_consent(page, base, participant, shots)
    page.wait_for_selector("#page-prompt-structured:not([hidden])")
    short_structured_prompt(page, shots)
    page.wait_for_selector("#page-webcam:not([hidden])")
    wait_for(page, "document.getElementById('preview').videoWidth > 0")
    page.click("#webcam-check")
    page.wait_for_selector("#webcam-status.ok", timeout=30_000)
    wait_for(page, "document.getElementById('generation-status').textContent.includes('All')", timeout=60)
    shots("webcam")
    page.click("#webcam-continue")


# Elements wider than the viewport, for a readable failure message.
OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('body *')].filter((el) => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && (r.right > width + 0.5 || r.left < -0.5) && getComputedStyle(el).position !== 'fixed';
  }).slice(0, 8).map((el) => `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}.${[...el.classList].join('.')} ${Math.round(el.getBoundingClientRect().left)}..${Math.round(el.getBoundingClientRect().right)}`);
  return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth, wide};
}"""


def assert_no_sideways_scroll(page, where: str) -> None:
    """The page is no wider than the viewport: nothing scrolls sideways."""
    info = page.evaluate(OVERFLOW_JS)
    assert info["scroll"] <= info["inner"], f"{where}: page is {info['scroll']} px wide in a {info['inner']} px viewport; too wide: {info['wide']}"


def clip_frames_ok(clip, expected: int, share: float = 0.8) -> bool:
    """A reaction clip counts as valid here: the server says so and it has enough frames.

    The server's clip-validity share (80 % of the expected frames) is checked here too,
    so the test holds on servers with and without that rule.
    """
    return bool(clip.clip_valid) and clip.n_frames >= share * expected


def launch(playwright, chromium: str, webcam_y4m: Path | None = None, *, fake_ui: bool = True):
    """A Chromium of its own, for a test that needs other flags than the shared one.

    ``webcam_y4m=None``: no camera device at all. ``fake_ui=False``: the page's camera
    request meets a real permission prompt (denied until the test grants it).
    """
    args = [a for a in CHROMIUM_ARGS if fake_ui or a != "--use-fake-ui-for-media-stream"]
    if webcam_y4m is None:
        args = [a for a in args if a != "--use-fake-device-for-media-stream"]
    else:
        args.append(f"--use-file-for-fake-video-capture={webcam_y4m}")
    return playwright.chromium.launch(executable_path=chromium, headless=True, args=args)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def webcam_y4m(tmp_path_factory) -> Path:
    from skimage import data

    from fergi.face import write_reaction_video

    path = tmp_path_factory.mktemp("webcam") / "face.y4m"
    # Neutral, then a smile: the fake device loops the file for as long as the camera is on.
    return write_reaction_video(path, data.astronaut(), neutral_s=1.0, expression_s=2.0, smile=1.0)


# The driver and the browser live as long as the browser tests' package: the sync API keeps
# an event loop of its own in this thread, which other tests' asyncio.run() need not meet.
@pytest.fixture(scope="package")
def playwright(chromium):
    """One Playwright driver for all browser tests (the sync API allows one per thread)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser(playwright, chromium, webcam_y4m):
    """The shared Chromium, its fake webcam playing ``webcam_y4m``."""
    shared = launch(playwright, chromium, webcam_y4m)
    yield shared
    shared.close()


@pytest.fixture
def new_context(browser):
    """``new_context(**options)``: a fresh browser context, closed after the test."""
    contexts = []

    def make(**options):
        options.setdefault("viewport", {"width": 1280, "height": 860})
        context = browser.new_context(**options)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_context):
    """A page in a fresh 1280x860 context of the shared Chromium."""
    return new_context().new_page()


@pytest.fixture
def study_server(tmp_path):
    """Start the study app with uvicorn on a free port: ``start(**settings) -> (url, app)``."""
    from contextlib import ExitStack

    from fergi.study import StudySettings, create_app

    with ExitStack() as servers:

        def start(wrap=None, **overrides):
            """``wrap(app)``: an ASGI app served in front of the study (e.g. a slow network)."""
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
            url = servers.enter_context(serve(wrap(app) if wrap is not None else app))
            return url, app

        yield start


@pytest.fixture
def live_server(study_server):
    return study_server()
