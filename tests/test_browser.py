"""The app in a real browser: Debian's chromium driven by Playwright (never a downloaded browser).

Skips when chromium is missing, unless REQUIRE_BROWSER=1 (CI), which makes that a failure.
SAVE_MEDIA=1 also saves the screenshot as media/app.png for the README, taken on the demo bundle when
checkpoints/demo exists (tiny random models write gibberish captions).
"""
import os
import re
import socket
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

import app as app_module
from conftest import make_tiny_captioner
from models.inspector import Inspector
from utils.reviews import ReviewStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")  # gradio's own pandas use
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "media" / "examples" / "apple_dark_spots.jpg"
TIMEOUT_MS = 60_000  # the machine may be busy; a real failure still ends the test


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not installed (apt-get install chromium)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def save_media(shot, name):
    """With SAVE_MEDIA=1, a copy for the README in 256 colours: a UI screenshot loses nothing visible, and
    the file shrinks about four times."""
    if os.environ.get("SAVE_MEDIA") == "1":
        picture = Image.open(shot).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
        picture.save(ROOT / "media" / name, optimize=True)


def make_inspector():
    demo = app_module.DEMO_BUNDLE
    if os.environ.get("SAVE_MEDIA") == "1" and (demo / "config.json").is_file():
        return Inspector.load(checkpoint=demo, device="cpu")
    captioner = make_tiny_captioner("opt")
    return Inspector(captioner.clip, "fruit", captioner)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return tmp_path_factory.mktemp("reviews")


@pytest.fixture(scope="module")
def served(reviews):
    app = app_module.build_app(make_inspector(), review_dir=reviews)
    try:
        _, url, _ = app_module.launch(app, server_name="127.0.0.1", server_port=free_port(),
                                      prevent_thread_lock=True, quiet=True)
        yield url
    finally:
        app.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(served)
    page.locator("#run").wait_for()
    yield page
    page.close()


def test_upload_run_and_see_caption_and_overlays(page, tmp_path):
    page.locator("#photo input[type=file]").set_input_files(str(PHOTO))
    page.locator("#photo img").first.wait_for()
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#caption textarea').value.length > 0")
    page.locator("#combined img").wait_for()
    page.locator("#overlays img").nth(4).wait_for()  # all five descriptions
    page.locator("#caption-map img").wait_for()
    labels = page.locator("#top-k").inner_text()
    assert "%" in labels
    expect(page.locator("#verdict")).to_contain_text(re.compile("PASS|FAIL|REVIEW"))
    page.wait_for_timeout(500)  # let images finish painting before the picture is taken
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 1400
    save_media(shot, "app.png")


def test_a_bad_upload_shows_a_clear_message(page, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a photo")
    page.locator("#photo input[type=file]").set_input_files(str(fake))
    page.locator("#run").click()
    page.get_by_text("not a readable image").first.wait_for()
    page.locator("#photo input[type=file]").set_input_files(str(PHOTO))  # and the app still works
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#caption textarea').value.length > 0")


def test_batch_tab_fills_the_table(page, tmp_path):
    bad = tmp_path / "readme.txt"
    bad.write_text("not a photo")
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-files input[type=file]").set_input_files([str(PHOTO), str(bad)])
    page.locator("#run-batch").click()
    table = page.locator("#batch-table")
    expect(table).to_contain_text("not a readable image")
    expect(table).to_contain_text(PHOTO.name)
    page.locator("#batch-gallery img").first.wait_for()
    with page.expect_download() as download:
        page.locator("#batch-csv").get_by_role("link").first.click()
    saved = tmp_path / "inspection.csv"
    download.value.save_as(saved)
    assert [row.split(",")[0] for row in saved.read_text().splitlines()] == ["file", PHOTO.name, bad.name]
    shot = tmp_path / "app_batch.png"
    page.screenshot(path=str(shot), full_page=True)
    save_media(shot, "app_batch.png")


def test_flag_a_result_and_find_it_in_the_review_directory(page, reviews, tmp_path):
    page.locator("#photo input[type=file]").set_input_files(str(PHOTO))
    page.locator("#photo img").first.wait_for()
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#caption textarea').value.length > 0")
    caption = page.locator("#caption textarea").input_value()
    page.locator("#review-judgement").get_by_text("Wrong").click()
    page.locator("#review-descriptions").get_by_text("dark spots").click()
    page.locator("#review-descriptions").get_by_text("a brown bruise").click()
    page.locator("#review-caption textarea").fill("An apple with dark spots and a brown bruise.")
    page.locator("#review-note textarea").fill("checked under the lamp")
    page.locator("#review-save").click()
    expect(page.locator("#review-status")).to_contain_text("Saved: review 1")
    row, = ReviewStore(reviews).rows()
    assert row["judgement"] == "wrong" and sorted(row["descriptions"]) == ["bruise", "dark_spots"]
    assert row["corrected_caption"] == "An apple with dark spots and a brown bruise."
    assert row["note"] == "checked under the lamp" and row["caption"] == caption
    assert (reviews / row["image"]).read_bytes() == PHOTO.read_bytes()
    assert row["id"] in (reviews / "reviews.csv").read_text()
    shot = tmp_path / "app_review.png"
    page.screenshot(path=str(shot), full_page=True)
    save_media(shot, "app_review.png")
