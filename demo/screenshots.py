"""README screenshots of the app serving a bundle: app.py in a subprocess, Debian's chromium driven by
Playwright (never a downloaded browser), one full-page shot per photo, saved in 256 colours.

    python -m demo.screenshots --checkpoint checkpoints/elpv --examples checkpoints/elpv-work/cells/examples \\
        --photo checkpoints/elpv-work/cells/examples/defective_mono_cell0007.png --out media/elpv_crack.png
"""
import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
TIMEOUT_MS = 300_000  # a loaded 2-core machine explains a photo in tens of seconds


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(checkpoint, examples, port):
    """app.py serving `checkpoint` on 127.0.0.1:`port`, once it answers."""
    command = [sys.executable, str(ROOT / "app.py"), "--checkpoint", checkpoint, "--port", str(port)]
    command += ["--examples", examples] if examples else []
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return server
        except OSError:
            time.sleep(2)
    server.kill()
    raise SystemExit(f"app.py did not start serving on port {port}")


def shoot(browser, url, photo, out, width):
    """Upload `photo`, inspect it, wait for caption, top-k and maps, and save the page in 256 colours."""
    from PIL import Image

    page = browser.new_page(viewport={"width": width, "height": 800})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    page.locator("#photo img").first.wait_for()
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#caption textarea').value.length > 0")
    for selector in ("#combined img", "#overlays img", "#caption-map img"):
        page.locator(selector).first.wait_for()
    page.wait_for_timeout(1500)  # the galleries' images finish loading
    shot = Path(out).with_suffix(".full.png")
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    Image.open(shot).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    shot.unlink()
    print(f"saved {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", metavar="DIR", required=True, help="the bundle app.py serves (required)")
    parser.add_argument("--examples", metavar="DIR", help="app.py --examples folder")
    parser.add_argument("--photo", action="append", required=True, help="a photo to inspect, repeatable (required)")
    parser.add_argument("--out", action="append", required=True, help="the PNG for each --photo, in order (required)")
    parser.add_argument("--width", type=int, default=1280, help="browser width in pixels (default 1280)")
    args = parser.parse_args(argv)
    if len(args.photo) != len(args.out):
        parser.error("give one --out per --photo")
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = start_app(args.checkpoint, args.examples, port)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            for photo, out in zip(args.photo, args.out):
                shoot(browser, f"http://127.0.0.1:{port}/", photo, out, args.width)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # still busy with a request: SIGTERM waits for it
            server.kill()


if __name__ == "__main__":
    main()
