"""The console's Jobs tab in a real browser against the real stack: two clips, their progress, linked speakers, exports.

dev09 and dev10 of the dev set (../shared/data/devset, read in place) share one reader, as in
tests/integration/test_jobs.py: the page must show that reader's voice in both clips, under one label.
What the page shows is compared with what the jobs API answers.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import httpx
import pytest

DEVSET = Path(__file__).parents[3] / ".." / "shared" / "data" / "devset"
CLIPS = ("dev09.flac", "dev10.flac")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PANEL = "[data-panel=jobs]"
JOB_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def stack(local_stack):
    with local_stack("console-jobs", report_timeout_s=300) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack):
    with httpx.Client(base_url=stack.gateway_url, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def browser(stack, launch_chromium):
    return launch_chromium(None)


def panel_state(page) -> dict:
    """The panel's state, overall progress and each clip row's status and progress."""
    return page.eval_on_selector(
        PANEL,
        """p => ({state: p.dataset.state, job: p.dataset.job, progress: Number(p.dataset.progress),
                  clips: [...p.querySelectorAll('[data-part=job-clips] tr')].map(r =>
                    ({name: r.dataset.clip, status: r.dataset.status, progress: Number(r.dataset.progress)}))})""",
    )


def voices_shown(page) -> dict[str, dict[str, int]]:
    """Label -> clip -> milliseconds, as the page's table of linked speakers holds them (clips it is absent from left out)."""
    return page.eval_on_selector_all(
        f"{PANEL} [data-part=job-voices] tbody tr",
        """rows => Object.fromEntries(rows.map(r => [r.dataset.label, Object.fromEntries(
                 [...r.querySelectorAll('td[data-clip]')].filter(c => c.dataset.speakers !== '')
                   .map(c => [c.dataset.clip, Number(c.dataset.ms)]))]))""",
    )


@dataclasses.dataclass
class RanJob:
    job_id: str
    polls: list[dict]  # the panel's state at each poll while the job ran
    voices: dict[str, dict[str, int]]
    downloads: dict[str, str]


@pytest.fixture(scope="module")
def ran_job(stack, browser, artifacts) -> RanJob:
    """A job of both clips submitted from the page and followed there to its results."""
    page = browser.new_page(viewport=DESKTOP)
    page.goto(stack.gateway_url + "/#jobs")
    page.set_input_files(f"{PANEL} input[name=clips]", [str(DEVSET / "audio" / name) for name in CLIPS])
    page.get_by_role("button", name="Run job").click()
    polls = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    shot = False
    while time.monotonic() < deadline:
        state = panel_state(page)
        if state["clips"]:
            polls.append(state)
        if not shot and any(0 < c["progress"] < 1 for c in state["clips"]):
            page.screenshot(path=artifacts / "console-jobs-running.png", full_page=True)
            shot = True
        if state["state"] in ("reported", "failed", "missing"):
            break
        page.wait_for_timeout(250)
    else:
        pytest.fail(f"the job did not finish in {JOB_TIMEOUT_S} s: {panel_state(page)}")
    assert panel_state(page)["state"] == "reported", page.locator(f"{PANEL} [data-part=jobs-error]").inner_text()
    page.screenshot(path=artifacts / "console-jobs-results.png", full_page=True)
    downloads = {}
    for fmt in ("json", "csv", "text", "rttm"):
        with page.expect_download() as download:
            page.click(f"{PANEL} a[data-format={fmt}]")
        downloads[fmt] = Path(download.value.path()).read_text()
    result = RanJob(job_id=panel_state(page)["job"], polls=polls, voices=voices_shown(page), downloads=downloads)
    page.close()
    return result


def test_progress_is_shown_per_clip_and_overall_until_done(ran_job):
    polls = ran_job.polls
    assert [c["name"] for c in polls[-1]["clips"]] == list(CLIPS)
    overall = [p["progress"] for p in polls]
    assert overall == sorted(overall) and overall[-1] == 1.0
    assert any(0 < p < 1 for p in overall), "the page never showed the job part-way"
    for index in range(len(CLIPS)):
        per_clip = [p["clips"][index]["progress"] for p in polls]
        assert per_clip == sorted(per_clip) and per_clip[-1] == 1.0
        assert polls[-1]["clips"][index]["status"] == "done"


def test_the_linked_speakers_are_the_api_results_and_one_voice_is_in_both_clips(api, ran_job):
    results = api.get(f"/v1/jobs/{ran_job.job_id}/results").json()
    expected: dict[str, dict[str, int]] = {label: {} for label in results["labels"]}
    for clip in results["clips"]:
        for speaker in clip["speakers"]:
            by_clip = expected[speaker["label"]]
            by_clip[clip["name"]] = by_clip.get(clip["name"], 0) + speaker["totalTimeMs"]
    assert ran_job.voices == expected
    # The reader of both clips (test_jobs.py checks which one): one row with talk time in each.
    assert any(set(by_clip) == set(CLIPS) for by_clip in ran_job.voices.values()), ran_job.voices


def test_every_export_downloads_what_the_api_exports(api, ran_job):
    for fmt, text in ran_job.downloads.items():
        exported = api.get(f"/v1/jobs/{ran_job.job_id}/export", params={"format": fmt})
        assert exported.status_code == 200
        assert text == exported.text, fmt


def test_a_job_opened_by_its_address_shows_its_results_at_phone_width(stack, browser, ran_job, artifacts):
    page = browser.new_page(viewport=PHONE)
    page.goto(f"{stack.gateway_url}/#jobs/{ran_job.job_id}")
    page.wait_for_function(f"document.querySelector('{PANEL}').dataset.state === 'reported'", timeout=60_000)
    page.screenshot(path=artifacts / "console-jobs-phone.png", full_page=True)
    assert voices_shown(page) == ran_job.voices
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    page.close()


def test_a_refused_upload_and_an_unknown_job_show_the_gateway_error(stack, browser, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"not audio at all " * 200)
    page = browser.new_page(viewport=DESKTOP)
    page.goto(stack.gateway_url + "/#jobs")
    page.set_input_files(f"{PANEL} input[name=clips]", str(notes))
    page.get_by_role("button", name="Run job").click()
    alert = page.locator(f"{PANEL} [data-part=jobs-error]")
    alert.wait_for(timeout=30_000)
    assert "415 unsupported_format: notes.txt: not WAV, FLAC, MP3 or OGG audio" in alert.inner_text()
    page.goto(f"{stack.gateway_url}/#jobs/no-such-job")
    page.locator(f"{PANEL} [data-part=jobs-error]").filter(has_text="404 unknown_job").wait_for(timeout=30_000)
    page.close()


def test_deleting_the_job_asks_first(stack, api, browser, ran_job):
    """Runs last: it deletes the module's job."""
    page = browser.new_page(viewport=DESKTOP)
    page.goto(f"{stack.gateway_url}/#jobs/{ran_job.job_id}")
    page.wait_for_function(f"document.querySelector('{PANEL}').dataset.state === 'reported'", timeout=60_000)
    page.get_by_role("button", name="Delete this job").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert api.get(f"/v1/jobs/{ran_job.job_id}").status_code == 200
    page.get_by_role("button", name="Delete this job").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_function(f"document.querySelector('{PANEL}').dataset.state === 'deleted'")
    assert api.get(f"/v1/jobs/{ran_job.job_id}").status_code == 404
    page.close()
