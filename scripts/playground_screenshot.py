"""Writes docs/playground.png: the playground explaining a tweet with the served sentiment
model (`python scripts/playground_screenshot.py [--models models]`). Needs Debian's
chromium (scripts/system-deps.sh) and the test extra's Playwright."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.server import Service  # noqa: E402
from tests.test_ui import CHROMIUM_ARGS  # noqa: E402

TEXT = "Flight delayed three hours and the crew was great about it, but the food was awful"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="models")
    p.add_argument("--out", default=str(ROOT / "docs" / "playground.png"))
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    svc = Service(Path(a.models), env={"ORTSERVE_DEFAULT_MODEL": "sentiment"})
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"),
                                         args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(f"{svc.url}/ui/")
            page.locator("#card-facts", has_text="text-classification").wait_for()
            page.fill("#text", TEXT)
            page.click("#explain")
            page.wait_for_selector("#result:not([hidden])")
            page.screenshot(path=a.out, full_page=True)
            browser.close()
    finally:
        svc.stop()
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
