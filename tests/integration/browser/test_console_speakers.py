"""The console's Speakers tab in a real browser against the real stack: enrol, list, add clips, delete, refusals.

The voices are readers of the enrolment dev set (../shared/data/enrollment), read in place. One
reader's clip, as a WAV file, is Chromium's microphone for the recording made in the page.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

DATA = Path(__file__).parents[3] / ".." / "shared" / "data" / "enrollment"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PANEL = "[data-panel=speakers]"
# Chromium loops its fake microphone's file: a recording this long holds over 3 s of the reader's speech.
RECORD_S = 7.0


@pytest.fixture(scope="module")
def stack(local_stack):
    with local_stack("console-speakers", report_timeout_s=120) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack):
    with httpx.Client(base_url=stack.gateway_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def browser(stack, launch_chromium, tmp_path_factory):
    """Chromium with one reader (LS1116) as its microphone: the fake capture device plays WAV only."""
    audio, rate = soundfile.read(DATA / "enroll" / "LS1116.flac", dtype="float32")
    wav = tmp_path_factory.mktemp("speakers") / "LS1116.wav"
    soundfile.write(wav, audio, rate)
    return launch_chromium(wav)


@pytest.fixture
def page(stack, browser):
    page = browser.new_page(viewport=DESKTOP)
    page.goto(stack.gateway_url + "/#speakers")
    page.get_by_role("heading", name="Enrolled speakers").wait_for()
    yield page
    page.close()


def listed(page) -> dict[str, str]:
    """Name -> profile id, as the page's table lists them."""
    return page.eval_on_selector_all(
        f"{PANEL} [data-part=profiles] tr",
        "rows => Object.fromEntries(rows.map(r => [r.querySelector('th').firstChild.textContent, r.dataset.profile]))",
    )


def wait_listed(page, name: str, present: bool = True) -> None:
    page.wait_for_function(
        """([name, present]) => [...document.querySelectorAll('[data-panel=speakers] [data-part=profiles] th')]
             .some(th => th.firstChild.textContent === name) === present""",
        arg=[name, present],
        timeout=120_000,
    )


def enrol_files(page, name: str, *clips: Path) -> None:
    page.get_by_label("Name", exact=True).fill(name)
    page.set_input_files(f"{PANEL} [data-part=enrol-form] input[name=clips]", [str(c) for c in clips])
    page.get_by_role("button", name="Enrol", exact=True).click()


def alert_text(page) -> str:
    alert = page.locator(f"{PANEL} [data-part=speakers-error]")
    alert.wait_for(timeout=120_000)
    return alert.inner_text()


def wav(audio: np.ndarray, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, audio, rate, format="WAV")
    return out.getvalue()


def test_a_speaker_enrolled_from_a_file_and_one_from_a_recording_are_listed_and_one_is_deleted(page, api, artifacts):
    enrol_files(page, "Grace", DATA / "enroll" / "LS6818.flac")
    wait_listed(page, "Grace")
    assert "Enrolled Grace from 1 clip" in page.get_by_role("status").filter(has_text="Enrolled").inner_text()

    # A recording made in the page: the fake microphone plays LS1116's voice.
    page.get_by_label("Name", exact=True).fill("Ada")
    page.get_by_role("button", name="Record", exact=True).click()
    page.wait_for_function(f"Number(document.querySelector('{PANEL}').dataset.recordedS) >= {RECORD_S}", timeout=30_000)
    page.get_by_role("button", name="Stop recording").click()
    page.wait_for_function(f"document.querySelector('{PANEL}').dataset.recording === 'done'")
    assert page.locator(f"{PANEL} [data-part=record-preview]").is_visible()
    page.get_by_role("button", name="Enrol", exact=True).click()
    wait_listed(page, "Ada")
    page.screenshot(path=artifacts / "console-speakers.png", full_page=True)

    profiles = {p["name"]: p for p in api.get("/v1/speakers").json()["speakers"]}
    assert listed(page) == {name: p["id"] for name, p in profiles.items()}
    assert profiles["Grace"]["clips"] == 1 and profiles["Ada"]["clips"] == 1
    # The recording reached the gateway as a WAV it could embed: at least the speech it asks for.
    assert profiles["Ada"]["speechS"] >= 3.0

    # More clips for a profile, from the row's chooser.
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Add clips to Grace").click()
    chooser.value.set_files(str(DATA / "enroll" / "LS6818.flac"))
    page.wait_for_function(
        f"""[...document.querySelectorAll('{PANEL} [data-part=profiles] tr')]
              .some(r => r.dataset.profile === '{profiles["Grace"]["id"]}' && r.cells[2].textContent === '2')""",
        timeout=120_000,
    )
    assert api.get(f"/v1/speakers/{profiles['Grace']['id']}").json()["clips"] == 2

    # Delete asks first: Cancel keeps the profile, Delete removes it.
    page.get_by_role("button", name="Delete Ada").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert "Ada" in listed(page)
    page.get_by_role("button", name="Delete Ada").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete", exact=True).click()
    wait_listed(page, "Ada", present=False)
    assert api.get(f"/v1/speakers/{profiles['Ada']['id']}").status_code == 404
    assert set(listed(page)) == {"Grace"}


def test_each_refused_upload_shows_the_gateway_error_and_nothing_is_listed(page, api, tmp_path):
    before = api.get("/v1/speakers").json()
    two_readers = np.concatenate(
        [soundfile.read(DATA / "enroll" / f"{r}.flac", dtype="float32")[0] for r in ("LS1116", "LS5390")]
    )
    (tmp_path / "notes.txt").write_bytes(b"not audio at all " * 200)
    (tmp_path / "quiet.wav").write_bytes(wav(np.zeros(16_000 * 8, np.float32)))
    (tmp_path / "two.wav").write_bytes(wav(two_readers))
    # Over SPEAKERFLOW_ENROL_MAX_CLIP_BYTES (20 MiB by default).
    (tmp_path / "big.wav").write_bytes(b"\0" * (20 * 1024 * 1024 + 1))
    cases = [
        ("notes.txt", "415 unsupported_format: notes.txt: not WAV, FLAC, MP3 or OGG audio"),
        ("quiet.wav", "422 too_little_speech"),
        ("two.wav", "422 several_voices"),
        ("big.wav", "413 clip_too_large: big.wav"),
    ]
    for filename, expected in cases:
        enrol_files(page, "Ada", tmp_path / filename)
        assert expected in alert_text(page), filename
        page.locator(f"{PANEL} [data-part=enrol-submit]:enabled").wait_for()
        page.evaluate("document.querySelector('[data-panel=speakers] [data-part=speakers-error]').hidden = true")
    # A refused upload stays chosen, to be fixed and sent again; with none chosen and no recording,
    # the page says so before sending anything.
    page.set_input_files(f"{PANEL} [data-part=enrol-form] input[name=clips]", [])
    page.get_by_label("Name", exact=True).fill("Ada")
    page.get_by_role("button", name="Enrol", exact=True).click()
    assert "Choose files of their voice, or record it" in alert_text(page)
    assert api.get("/v1/speakers").json() == before


def test_speakers_tab_by_keyboard_and_at_phone_width(stack, browser, artifacts):
    page = browser.new_page(viewport=PHONE)
    page.goto(stack.gateway_url + "/")
    page.get_by_role("tab", name="Live").focus()
    page.keyboard.press("End")  # WAI-ARIA tabs: End selects the last tab
    assert page.evaluate("document.activeElement.dataset.tab") == "speakers"
    assert page.locator(PANEL).is_visible()
    page.get_by_role("heading", name="Enrolled speakers").wait_for()
    page.wait_for_function(
        f"document.querySelector('{PANEL} [data-part=profiles-note]').textContent !== ''", timeout=10_000
    )
    page.screenshot(path=artifacts / "console-speakers-phone.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    page.close()
