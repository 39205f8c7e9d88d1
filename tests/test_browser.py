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


DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
MIN_TEXT_PX = 12


def open_page(browser, url, viewport):
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#run").wait_for()
    return page


@pytest.fixture
def page(browser, served):
    page = open_page(browser, served, DESKTOP)
    yield page
    page.close()


@pytest.fixture
def phone(browser, served):
    page = open_page(browser, served, PHONE)
    yield page
    page.close()


def inspect_photo(page):
    page.locator("#photo input[type=file]").set_input_files(str(PHOTO))
    page.locator("#photo img").first.wait_for()
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#caption textarea').value.length > 0")
    page.locator("#combined img").wait_for()
    page.locator("#overlays img").nth(4).wait_for()  # all five descriptions
    page.locator("#caption-map").scroll_into_view_if_needed()  # a lazy <img> far down a phone page stays unloaded
    page.locator("#caption-map img").wait_for()


def box(page, selector):
    return page.locator(selector).first.bounding_box()


def overlap(a, b):
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


def drawn(image):
    """An <img>'s picture as shown (object-fit: contain): its box on the page and its scale."""
    info = image.evaluate("""e => { const r = e.getBoundingClientRect();
        const s = Math.min(r.width / e.naturalWidth, r.height / e.naturalHeight);
        return {x: r.x + (r.width - e.naturalWidth * s) / 2, y: r.y + (r.height - e.naturalHeight * s) / 2,
                scale: s, natural_width: e.naturalWidth, natural_height: e.naturalHeight}; }""")
    return info


def text_strip(info, panel_height):
    """The page box of an overlay's text (title, colour bar, legend): below its `panel_height` px picture."""
    top = info["y"] + panel_height * info["scale"]
    return {"x": info["x"], "y": top, "width": info["natural_width"] * info["scale"],
            "height": (info["natural_height"] - panel_height) * info["scale"]}


def check_overlay_text(page, selector, combined=False):
    """Every picture under `selector` shows its drawn text at >= 12 px, clear of the component's buttons."""
    from utils.plot import display_size, legend_font_size, title_font_size

    panel = display_size(Image.open(PHOTO).size)
    panel_height = panel[1]
    buttons = [b.bounding_box() for b in page.locator(f"{selector} button.icon-button:visible").all()]
    images = page.locator(f"{selector} img").all()
    assert images
    for image in images:
        image.scroll_into_view_if_needed()
        image.evaluate("e => e.decode()")
        info = drawn(image)
        font = legend_font_size(panel) if combined else title_font_size(info["natural_width"])
        assert font * info["scale"] >= MIN_TEXT_PX, (selector, font, info)
        strip = text_strip(info, panel_height)
        assert strip["height"] > 0
        covering = [b for b in buttons if b and b["width"] * b["height"] > 0 and overlap(b, strip)]
        assert not covering, f"{selector}: buttons {covering} cover the text strip {strip}"


def test_upload_run_and_see_caption_and_overlays(page, tmp_path):
    """At 1280 x 800 the Inspect button and the results sit in the first screen, side by side, and the text
    drawn into the overlays is readable and never under a button."""
    inspect_photo(page)
    labels = page.locator("#top-k").inner_text()
    assert "%" in labels
    expect(page.locator("#verdict")).to_contain_text(re.compile("PASS|FAIL|REVIEW"))
    page.evaluate("() => window.scrollTo(0, 0)")  # as a user who never scrolled sees it
    boxes = {name: box(page, name) for name in ("#run", "#caption", "#caption-note", "#verdict", "#combined", "#top-k")}
    for name, found in boxes.items():
        assert found["y"] >= 0 and found["y"] + found["height"] <= DESKTOP["height"], (name, found)
    names = list(boxes)
    assert not [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if overlap(boxes[a], boxes[b])]
    assert page.locator("#caption-note").inner_text().strip()
    page.wait_for_timeout(500)  # let images finish painting before the picture is taken
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == DESKTOP["width"]
    save_media(shot, "app.png")
    check_overlay_text(page, "#combined", combined=True)
    check_overlay_text(page, "#caption-map")
    check_overlay_text(page, "#overlays")


def test_phone_layout_keeps_titles_and_percentages_readable(phone, tmp_path):
    """At 390 x 844: one overlay per row, gallery titles whole (percentage included), drawn text >= 12 px."""
    inspect_photo(phone)
    tiles = [tile.bounding_box() for tile in phone.locator("#overlays .thumbnail-item").all()]
    assert len(tiles) == 5 and len({round(tile["x"]) for tile in tiles}) == 1  # a single column
    for caption in phone.locator("#overlays .caption-label").all():
        assert "%" in caption.inner_text()
        assert caption.evaluate("e => e.scrollWidth <= e.clientWidth + 1")  # not cut off
    rows = phone.locator("#top-k dt").all_inner_texts()
    assert rows and all(text.strip().endswith("%)") for text in rows)
    check_overlay_text(phone, "#combined", combined=True)
    check_overlay_text(phone, "#caption-map")
    check_overlay_text(phone, "#overlays")
    phone.evaluate("() => window.scrollTo(0, 0)")
    phone.wait_for_timeout(500)
    shot = tmp_path / "app_phone.png"
    phone.screenshot(path=str(shot), full_page=True)
    save_media(shot, "app_phone.png")


def test_settings_open_beside_the_photo_and_inspect_stays_in_view(page, tmp_path):
    assert not page.get_by_label("Temperature").first.is_visible()  # closed by default: nothing pushed down
    page.locator(".sidebar .toggle-button").first.click()
    page.get_by_text("Caption generation").first.click()
    temperature = page.get_by_label("Temperature").first
    temperature.wait_for()
    run, slider = box(page, "#run"), temperature.bounding_box()
    assert run["y"] + run["height"] <= DESKTOP["height"]  # opening Generation pushes nothing down
    assert slider["x"] >= box(page, "#photo")["x"] + box(page, "#photo")["width"]  # beside the photo, not above
    shot = tmp_path / "app_settings.png"
    page.screenshot(path=str(shot))
    save_media(shot, "app_settings.png")


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
    check_overlay_text(page, "#batch-gallery", combined=True)
    name = page.locator("#batch-gallery .caption-label").first
    assert not overlap(name.bounding_box(), box(page, "#batch-gallery img"))  # file names under, not over
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
