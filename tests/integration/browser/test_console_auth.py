"""The console against a gateway that requires credentials (SPEAKERFLOW_AUTH_MODE=required), in a real browser.

The page must ask for an API key once, say so when a key is refused or none is given, exchange
the key for short-lived tokens (POST /v1/tokens) and renew them without asking again, send them
on HTTP requests and on the WebSockets (?access_token=), and say why when a socket is refused
for want of a scope (close 1008). The open mode is what the other console tests run.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from pipeline.devstack.stack import Stack, free_port
from pipeline.gateway.api_keys import create_key
from pipeline.settings import Settings

DATA = Path(__file__).parents[3] / ".." / "shared" / "data" / "enrollment"
DESKTOP = {"width": 1280, "height": 800}
# Short, so the page renews its token during a test: it renews a few seconds before expiry.
TOKEN_TTL_S = 12.0


@pytest.fixture(scope="module")
def stack(bootstrap, tmp_path_factory):
    """A gateway that requires credentials; no workers: nothing here needs a session's results."""
    settings = Settings(
        gateway_port=free_port(),
        auth_mode="required",
        auth_jwt_secret=secrets.token_hex(32),
        auth_token_ttl_s=TOKEN_TTL_S,
    )
    with Stack(tmp_path_factory.mktemp("console-auth"), settings, bootstrap=bootstrap, workers={}) as running:
        yield running


@pytest.fixture(scope="module")
def keys(stack, bootstrap) -> dict[str, str]:
    """API keys of one tenant: all the console needs, and one that may not watch sessions."""

    async def create() -> dict[str, str]:
        full, _ = await create_key(bootstrap, "acme", ["ingest", "subscribe", "speakers", "jobs"], "console test")
        no_watch, _ = await create_key(bootstrap, "acme", ["speakers"], "console test, no subscribe")
        return {"full": str(full), "speakers_only": str(no_watch)}

    created = asyncio.run(create())
    asyncio.run(asyncio.sleep(2))  # the gateway's view of the key topic follows within its poll
    return created


@pytest.fixture(scope="module")
def browser(stack, keys, launch_chromium):
    return launch_chromium(None)


def give_key(page, key: str) -> None:
    dialog = page.get_by_role("dialog")
    dialog.wait_for(timeout=10_000)
    dialog.get_by_label("API key").fill(key)
    dialog.get_by_role("button", name="Use the key").click()


def test_the_page_asks_once_renews_its_token_and_sends_it(stack, keys, browser):
    page = browser.new_page(viewport=DESKTOP)
    exchanges = []
    page.on("request", lambda r: exchanges.append(r) if r.url.endswith("/v1/tokens") else None)
    page.goto(stack.gateway_url + "/#speakers")
    # A wrong key is refused in the dialog, which asks again.
    give_key(page, "sf_0123456789ab_not-the-secret")
    page.get_by_role("dialog").get_by_role("alert").filter(has_text="refused this API key").wait_for(timeout=10_000)
    give_key(page, keys["full"])
    page.wait_for_function("document.querySelector('[data-part=profiles-note]').textContent.includes('Nobody')")
    assert "tenant acme" in page.locator("[data-part=auth-note]").inner_text()
    assert all(r.headers.get("authorization", "").startswith("Bearer sf_") for r in exchanges)

    # An enrolment is a multipart POST with the token.
    page.get_by_label("Name", exact=True).fill("Grace")
    page.set_input_files("[data-part=enrol-form] input[name=clips]", str(DATA / "enroll" / "LS6818.flac"))
    page.get_by_role("button", name="Enrol", exact=True).click()
    page.wait_for_function(
        "[...document.querySelectorAll('[data-part=profiles] th')].some(th => th.firstChild.textContent === 'Grace')",
        timeout=120_000,
    )
    # Past the first token's life: renewed without a prompt, the list still loads.
    page.wait_for_timeout(TOKEN_TTL_S * 1000 + 2000)
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_function("document.querySelector('[data-part=profiles-note]').textContent.startsWith('1 enrolled')")
    assert not page.get_by_role("dialog").is_visible()
    assert len(exchanges) >= 3  # the refused key, the first token, at least one renewal

    # A socket carries the token in its query string: Watch opens, and stays open, on a session of the
    # key's tenant (another tenant's would be refused at once, after a moment in the open state).
    page.goto(stack.gateway_url + "/#watch/acme:session-1")
    page.wait_for_function("document.querySelector('[data-panel=watch]').dataset.state === 'watching'", timeout=10_000)
    page.wait_for_timeout(1000)
    assert page.locator("[data-panel=watch]").get_attribute("data-state") == "watching"
    page.close()


def test_a_key_without_the_scope_and_no_key_at_all_are_explained(stack, keys, browser):
    page = browser.new_page(viewport=DESKTOP)
    page.goto(stack.gateway_url + "/#watch/acme-session-2")
    give_key(page, keys["speakers_only"])
    alert = page.locator("[data-panel=watch] [data-part=watch-error]")
    alert.wait_for(timeout=10_000)
    assert "close code 1008" in alert.inner_text()
    page.close()

    # Cancelled: the page says a key is needed and asks no more until Sign in.
    page = browser.new_page(viewport=DESKTOP)
    page.goto(stack.gateway_url + "/#speakers")
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    page.locator("[data-part=profiles-note]").filter(has_text="requires an API key").wait_for(timeout=10_000)
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_timeout(500)
    assert not page.get_by_role("dialog").is_visible()
    page.get_by_role("button", name="Sign in").click()
    give_key(page, keys["full"])
    page.locator("[data-part=auth-note]").filter(has_text="tenant acme").wait_for(timeout=10_000)
    page.get_by_role("button", name="Refresh").click()
    page.locator("[data-part=profiles-note]").filter(has_text="enrolled").wait_for(timeout=10_000)
    page.close()
