"""End to end: the admin's science pages in real headless Chromium.

A session is recorded (a synthetic face video uploaded in chunks through the API),
answered, ranked and processed by the worker with the geometry estimator, no webcam
needed. The face looks away for 0.4 s during image 1 (those frames have no face and
make its reaction clip invalid), smiles when image 2 appears and frowns when image 4
does. The admin session page must draw each image's AU4 and AU12 curves with the
onset marked and the invalid frames shaded, print the activation values and reasons,
and list the labelled pairs; the test checks the DOM against the API and saves a
screenshot (also to FERGI_E2E_SCREENSHOTS when set) that must not be blank.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.browser import serve
from tests.helpers.study import make_settings, processed_session

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FPS = 30
#: (image, baseline_start): 1 s baseline, then 1 s on screen.
PRESENTATIONS = ((1, 0.0), (2, 2.0), (3, 4.0), (4, 6.0))
ORDER = (2, 3, 1, 4)
#: The face is gone (looked away) from 1.3 s to 1.7 s: image 1's reaction clip.
AWAY = (round(1.3 * FPS), round(1.7 * FPS))


def _recording(folder: Path) -> Path:
    """9 s VP9 webm: neutral, a smile from 3 s, neutral again at 6 s, a frown from 7 s."""
    from skimage import data

    from fergi.face import reaction_frames
    from fergi.video import write_video

    face = data.astronaut()
    frames = itertools.chain(
        reaction_frames(face, neutral_s=3.0, expression_s=3.0, smile=1.0, fps=FPS),
        reaction_frames(face, neutral_s=1.0, expression_s=2.0, frown=1.0, fps=FPS),
    )

    def looking_away(stream):
        for i, frame in enumerate(stream):
            yield np.full_like(frame, 128) if AWAY[0] <= i < AWAY[1] else frame

    return write_video(folder / "recording.webm", looking_away(frames), fps=FPS)


@pytest.fixture
def admin_server(tmp_path):
    """A processed session, then the same app served by uvicorn: ``(url, app, session_id)``."""
    from fastapi.testclient import TestClient

    from fergi.study import create_app

    settings = make_settings(
        tmp_path, n_images=len(PRESENTATIONS), baseline_s=1.0, present_s=1.0, admin_token="e2e-admin"
    )
    app = create_app(settings)
    with TestClient(app) as client:
        p = processed_session(client, app, _recording(tmp_path), PRESENTATIONS, ORDER)
    with serve(app) as url:
        yield url, app, p.id


def _first_point(d: str) -> tuple[float, float]:
    m = re.match(r"M(-?[\d.]+),(-?[\d.]+)", d)
    assert m, d
    return float(m.group(1)), float(m.group(2))


def _save(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    folder = os.environ.get("FERGI_E2E_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)
    return path


def _assert_not_blank(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape[0] > 600 and pixels.shape[1] > 800, pixels.shape
    # A page of text and charts: many distinct grey levels and plenty of non-background.
    assert pixels.std() > 10, pixels.std()
    assert (np.abs(pixels - np.median(pixels)) > 40).mean() > 0.01


def _colour_pixels(path: Path, rgb: tuple[int, int, int], tolerance: int = 24) -> int:
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).sum())


def test_admin_session_page_shows_au_curves(new_context, admin_server, tmp_path):
    from playwright.sync_api import expect

    base, app, session_id = admin_server
    import httpx

    headers = {"Authorization": "Bearer e2e-admin"}
    science = httpx.get(f"{base}/api/admin/sessions/{session_id}/science?aus=all", headers=headers).json()
    images = {img["index"]: img for img in science["images"]}
    assert sorted(images) == [1, 2, 3, 4]
    # What the recording was made to show: the look-away invalidates image 1's reaction,
    # the smile and the frown are the largest AU12 and AU4 activations.
    away = images[1]["clips"]["reaction"]
    assert away["clip_valid"] is False and away["curves"]["invalid_why"].count("face") >= 10
    reaction = {i: img["clips"]["reaction"]["activations"] for i, img in images.items()}
    assert max(reaction, key=lambda i: reaction[i]["AU12"] or 0) == 2
    assert max(reaction, key=lambda i: reaction[i]["AU4"] or 0) == 4

    console: list[str] = []
    context = new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    page.goto(f"{base}/admin?token=e2e-admin")  # trades the token for the cookie
    page.wait_for_selector("#sessions tr")
    # The sessions list: timestamps and one compact badge per job kind.
    row = page.locator("#sessions tr").first
    expect(row.locator(".when").nth(1)).to_be_attached()
    kinds = row.locator(".jobs-compact summary .pill")
    expect(kinds).to_have_count(3)
    assert sorted(kinds.evaluate_all("els => els.map(e => e.dataset.kind)")) == ["clips", "generate", "process"]
    expect(kinds.filter(has_text="process: done")).to_have_count(1)

    page.goto(f"{base}/admin#/session/{session_id}")
    page.wait_for_selector("body[data-ready=session]")
    page.wait_for_selector("#au-grid .image-card >> nth=3")
    for index, image in images.items():
        chart = page.locator(f"svg.au-chart[data-image='{index}']")
        onset = chart.locator("line.onset")
        expect(onset).to_have_count(1)
        onset_x = float(onset.get_attribute("x1"))
        for au in ("AU4", "AU12"):
            for clip in ("baseline", "reaction"):
                path = chart.locator(f"path.au-curve[data-au={au}][data-clip={clip}]")
                expect(path).to_have_count(1)
                d = path.get_attribute("d")
                curves = image["clips"][clip]["curves"]
                # one vertex per frame with a measured value (no-face rows hold -1)
                measured = [v is not None and why != "face"
                            for v, why in zip(curves["values"][au], curves["invalid_why"], strict=True)]
                assert d.count("M") + d.count("L") == sum(measured)
            # The reaction curve starts at the onset (its first frame is shown at 0 s).
            first_x, _ = _first_point(chart.locator(f"path[data-au={au}][data-clip=reaction]").get_attribute("d"))
            assert abs(first_x - onset_x) < 1.0, (index, au, first_x, onset_x)
        # Invalid frames are shaded, as many as the API says.
        for clip in ("baseline", "reaction"):
            n_invalid = image["clips"][clip]["curves"]["valid"].count(False)
            shaded = chart.locator(f"rect.invalid-frames[data-clip={clip}]").evaluate_all(
                "els => els.reduce((s, e) => s + Number(e.dataset.frames), 0)"
            )
            assert shaded == n_invalid, (index, clip, shaded, n_invalid)
        # Activation values as printed, and the clip's validity.
        card = page.locator(f".image-card[data-image='{index}']")
        for au in ("AU4", "AU12"):
            cell = card.locator(f"tr[data-clip=reaction] td.activation[data-au={au}]")
            value = image["clips"]["reaction"]["activations"][au]
            expect(cell).to_have_text("—" if value is None else f"{value:.3f}", use_inner_text=True)
    expect(page.locator(".image-card[data-image='1'] svg rect.invalid-frames.face").first).to_be_attached()
    reasons = page.locator(".image-card[data-image='1'] .reasons")
    expect(reasons).to_contain_text("reaction:")
    expect(reasons).to_contain_text("% of frames valid")
    expect(page.locator(".image-card[data-image='1'] tr[data-clip=reaction]")).to_contain_text("invalid")

    # The pairs table, one row per labelled pair, with the ranking's verdict.
    pairs = science["pairs"]
    assert pairs, "processing made no labels"
    rows = page.locator("#pairs-table tbody tr")
    expect(rows).to_have_count(len(pairs))
    for i, pair in enumerate(pairs):
        text = rows.nth(i).inner_text()
        assert f"{pair['image_a']} vs {pair['image_b']}" in text
        assert f"{pair['score_difference']:.3f}" in text
        assert ("agrees" if pair["agrees"] else "disagrees" if pair["agrees"] is False else "—") in text
    # Answers with their times, below the science.
    page.wait_for_selector("#detail-card:not([hidden])")
    expect(page.locator("#detail tbody tr")).to_have_count(len(images))
    expect(page.locator("#detail tbody .when").nth(len(images) - 1)).to_be_attached()
    shot = _save(page, tmp_path, "admin_session.png")
    _assert_not_blank(shot)
    # The curves are on the picture: pixels of AU4's and AU12's colours.
    for au, rgb in (("AU4", (213, 94, 0)), ("AU12", (0, 114, 178))):
        assert _colour_pixels(shot, rgb) > 300, au

    # Any AU: AU4 off, AU25 on.
    page.click("#au-selector label:has(input[value=AU4])")
    page.click("#au-selector label:has(input[value=AU25])")
    expect(page.locator("path.au-curve[data-au=AU4]")).to_have_count(0)
    expect(page.locator("path.au-curve[data-au=AU25]")).to_have_count(2 * len(images))
    expect(page.locator("path.au-curve[data-au=AU12]")).to_have_count(2 * len(images))
    page.click("#au-selector label:has(input[value=AU4])")
    page.click("#au-selector label:has(input[value=AU25])")

    # The overview: counts, the valid-clip share and the running agreement chart.
    page.goto(f"{base}/admin#/overview")
    page.wait_for_selector("#overview-tiles")
    tiles = page.locator("#overview-tiles")
    expect(tiles).to_contain_text("Valid reaction clips")
    expect(tiles).to_contain_text("3 of 4")
    expect(page.locator("#running-chart")).to_have_count(1)
    _assert_not_blank(_save(page, tmp_path, "admin_overview.png"))

    # A failed stage makes its kind's one badge red; details and Retry on expand.
    from fergi.study.store import Job

    with app.state.sessionmaker() as db:
        failed = Job(session_id=session_id, kind="clips", status="failed", attempts=1,
                     stages={"image 1": "done", "image 2": "failed"}, error="FergiError: chunk 3 missing")
        db.add(failed)
        db.commit()
        failed_id = failed.id
    page.goto(f"{base}/admin#/")
    badge = page.locator("#sessions tr").first.locator(".jobs-compact summary .pill[data-kind=clips]")
    expect(badge).to_have_class(re.compile(r"\bfailed\b"), timeout=30_000)
    expect(badge).to_have_text("clips: failed", use_inner_text=True)
    expect(page.locator("#sessions tr").first.locator(".jobs-compact summary .pill")).to_have_count(3)
    page.locator("#sessions tr").first.locator(".jobs-compact summary").click()
    details = page.locator("#sessions tr").first.locator(".job-list")
    expect(details).to_contain_text("chunk 3 missing")
    expect(details).to_contain_text("image 2: failed")
    details.locator("button", has_text="Retry").click()
    deadline = time.monotonic() + 30
    while True:
        with app.state.sessionmaker() as db:
            if db.get(Job, failed_id).status == "queued":
                break
        assert time.monotonic() < deadline, "Retry did not requeue the job"
        time.sleep(0.2)
    assert not [line for line in console if line.startswith(("pageerror", "error"))], console
