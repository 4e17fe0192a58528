"""A real browser for the web console's tests: Debian's Chromium, driven headless by Playwright.

Playwright's own browser downloads are never used: `make test` installs the `chromium` Debian
package (or set CHROMIUM to another binary). Chromium's fake capture device plays a WAV file as
the microphone; it loops the file, so a test stops after one play. The flags keep it off the
network: no component updates, sync, first-run or background requests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
CHROMIUM = Path(os.environ.get("CHROMIUM") or "/usr/bin/chromium")
# Kept after the run (build/ is not committed); with SPEAKERFLOW_UPDATE_SCREENSHOT=1 the README's
# screenshot goes to docs/images as well.
ARTIFACTS = ROOT / "build" / "test-artifacts" / "browser"

OFFLINE_FLAGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def launch_chromium() -> Iterator[Callable[..., object]]:
    """Launches headless Chromium; `microphone` is a WAV file its fake capture device plays, None for no microphone.

    Playwright's sync API keeps an event loop running in the test thread while it is open, and
    asyncio.run() (a stack's start, other modules' clients) refuses to run beside it: so it is open
    for one module at a time, and a module requests its stack before this fixture.
    """
    # A missing browser fails rather than skips: make test installs it, so its absence is a broken setup.
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make setup` installs the Debian package (or set CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browsers = []

        def launch(microphone: Path | None):
            if microphone is not None:
                media = [
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={microphone}",
                ]
            else:
                media = ["--use-fake-device-for-media-stream"]  # a device, but no one to grant it
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[*OFFLINE_FLAGS, *media],
            )
            browsers.append(browser)
            return browser

        yield launch
        for browser in browsers:
            browser.close()
