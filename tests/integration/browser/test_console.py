"""The web console in a real browser against the real stack: Live, Watch, the exports, and errors shown.

One conversation with interruptions (the demo's two-voice script) is Chromium's microphone. The
Live page streams it in real time while a second page, at phone width, watches the same session;
what the pages show is read from the page, the report's figures against the script's.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import soundfile as sf

from pipeline.devstack.demo import demo_script
from pipeline.devstack.synthetic import synthesize
from pipeline.evaluation.talktime import compare
from pipeline.export import format_report
from topics import SessionReport

ROOT = Path(__file__).parents[3]
README_SCREENSHOT = ROOT / "docs" / "images" / "console-live.png"
TOLERANCE = 0.15
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

LIVE_VIEW = "[data-panel=live] [data-part=live-view]"
WATCH_VIEW = "[data-panel=watch] [data-part=watch-view]"


@pytest.fixture(scope="module")
def stack(local_stack):
    with local_stack("console", report_timeout_s=120) as running:
        yield running


@pytest.fixture(scope="module")
def conversation():
    """The demo's two voices, with three interruptions."""
    return synthesize(demo_script(2))


@pytest.fixture(scope="module")
def browser(stack, launch_chromium, conversation, tmp_path_factory):
    """Chromium with the conversation as its microphone."""
    wav = tmp_path_factory.mktemp("console") / "conversation.wav"
    conversation.write_wav(wav)
    return launch_chromium(wav)


def view_state(page, view: str) -> dict:
    return page.eval_on_selector(view, "e => ({...e.dataset})")


def rows(page, view: str, part: str) -> dict[int, int]:
    """Speaker id -> milliseconds, as the view's talk-time list or report table holds them."""
    selector = f"{view} [data-part={part}] [data-speaker]"
    return {
        int(r["speaker"]): int(r["ms"]) for r in page.eval_on_selector_all(selector, "rs => rs.map(r => r.dataset)")
    }


def live_progress(page) -> dict:
    """Milliseconds of audio the Live page has sent, and the speakers its view marks as talking."""
    return page.eval_on_selector(
        "[data-panel=live]",
        "p => ({sent: Number(p.dataset.sentMs), active: p.querySelector('[data-part=live-view]').dataset.active.split(' ').filter(Boolean)})",
    )


def content_box(page) -> dict:
    """The viewport down to the end of the page's content: a screenshot without the blank below."""
    bottom = page.evaluate("document.querySelector('main').getBoundingClientRect().bottom")
    viewport = page.viewport_size
    return {"x": 0, "y": 0, "width": viewport["width"], "height": min(viewport["height"], bottom + 8)}


def horizontal_overflow(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


@dataclasses.dataclass
class Streamed:
    session_id: str
    live_speakers: int  # speakers in the live view just before the stop
    overlap_shown: bool
    overlap_pictured: bool  # an overlap outlasted a screenshot: the README's picture is this session's
    live_report: dict[int, int]
    watch_report: dict[int, int]
    late_watch_report: dict[int, int]  # a Watch page opened after the report
    watch_speakers: int
    watch_overflow_px: int
    downloads: dict[str, str]


@pytest.fixture(scope="module")
def streamed(stack, browser, conversation, artifacts) -> Streamed:
    """One session streamed from the Live page and watched from a second page, through to its report."""
    live = browser.new_page(viewport=DESKTOP)
    watch = browser.new_page(viewport=PHONE)
    live.goto(stack.gateway_url + "/")
    live.select_option("select[name=num_speakers]", "2")
    live.get_by_role("button", name="Start").click()
    live.wait_for_function(f"document.querySelector('{LIVE_VIEW}').dataset.state === 'live'")
    session_id = live.eval_on_selector(LIVE_VIEW, "e => e.dataset.session")
    # The watcher finds the session in the list of running ones (it is listed from its first result).
    watch.goto(f"{stack.gateway_url}/#watch")
    watch.click(f"[data-part=running-list] button[data-session='{session_id}']", timeout=30_000)

    # Chromium loops the file: the session is stopped once one play of it has been sent (its edges
    # are silence). Until then, a screenshot whenever two voices are marked at once, each over the
    # last: the README's picture of the Live page is the session's last overlap, both lanes drawn.
    overlap_polls = overlap_frames = 0
    deadline = time.monotonic() + conversation.duration_s + 60
    while time.monotonic() < deadline:
        if live_progress(live)["sent"] >= conversation.duration_s * 1000 - 400:
            break
        if len(live_progress(live)["active"]) >= 2:
            overlap_polls += 1
            live.screenshot(path=artifacts / "console-live-frame.png", clip=content_box(live))
            # Kept only if the overlap outlasted the screenshot, so the picture shows it.
            if len(live_progress(live)["active"]) >= 2:
                shutil.move(artifacts / "console-live-frame.png", artifacts / "console-live.png")
                overlap_frames += 1
        live.wait_for_timeout(100)
    else:
        pytest.fail(
            f"the Live page sent {live_progress(live)['sent']} ms of the {conversation.duration_s:.1f} s conversation"
        )
    # The README's picture is refreshed on request only, so a test run leaves the tree as it was.
    if overlap_frames and os.environ.get("SPEAKERFLOW_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifacts / "console-live.png", README_SCREENSHOT)
    live_speakers = int(view_state(live, LIVE_VIEW)["speakers"])
    live.get_by_role("button", name="Stop").click()
    for page, view in ((live, LIVE_VIEW), (watch, WATCH_VIEW)):
        page.wait_for_function(f"document.querySelector('{view}').dataset.state === 'reported'", timeout=150_000)
    live.screenshot(path=artifacts / "console-report.png", full_page=True)
    watch.screenshot(path=artifacts / "console-watch-phone.png", full_page=True)

    downloads = {}
    for fmt in ("rttm", "json", "csv", "text"):
        with live.expect_download() as download:
            live.click(f"{LIVE_VIEW} a[data-format={fmt}]")
        downloads[fmt] = Path(download.value.path()).read_text()
    # Opened after the end, Watch shows the finished session's report, read back from the bus.
    late = browser.new_page(viewport=DESKTOP)
    late.goto(f"{stack.gateway_url}/#watch/{session_id}")
    late.wait_for_function(f"document.querySelector('{WATCH_VIEW}').dataset.state === 'reported'", timeout=30_000)
    result = Streamed(
        session_id=session_id,
        live_speakers=live_speakers,
        overlap_shown=overlap_polls > 0,
        overlap_pictured=overlap_frames > 0,
        live_report=rows(live, LIVE_VIEW, "report-rows"),
        watch_report=rows(watch, WATCH_VIEW, "report-rows"),
        late_watch_report=rows(late, WATCH_VIEW, "report-rows"),
        watch_speakers=int(view_state(watch, WATCH_VIEW)["speakers"]),
        watch_overflow_px=horizontal_overflow(watch),
        downloads=downloads,
    )
    for page in (live, watch, late):
        page.close()
    return result


def test_live_page_shows_two_speakers_and_their_talk_time(streamed, conversation):
    assert streamed.live_speakers == 2
    assert streamed.overlap_shown, "the live view never marked two speakers at once"
    assert streamed.overlap_pictured, "no overlap lasted as long as a screenshot"
    report = SessionReport.model_validate_json(streamed.downloads["json"])
    assert report.session_id == streamed.session_id
    # The page's table is the report's, and the report's talk time is the script's within 15 %.
    assert streamed.live_report == {s.id: s.total_time_ms for s in report.speakers}
    comparison = compare(conversation.reference_turns(), report)
    # Two reported speakers, one per voice (their ids are the session's own numbering).
    assert len({row.hypothesis for row in comparison} - {None}) == 2, comparison
    for row in comparison:
        assert row.relative_error <= TOLERANCE, comparison


def test_exports_are_what_the_command_line_writes(streamed):
    report = SessionReport.model_validate_json(streamed.downloads["json"])
    for fmt in ("rttm", "json", "csv", "text"):
        assert streamed.downloads[fmt] == format_report(report, fmt)


def test_watch_page_shows_the_same_session(streamed):
    assert streamed.watch_speakers == 2
    assert streamed.watch_report == streamed.live_report
    assert streamed.late_watch_report == streamed.live_report
    assert streamed.watch_overflow_px <= 0, "the Watch page scrolls sideways at phone width"


# Renders a tone at each context rate through the page's worklet and measures what comes out.
_TONE_THROUGH_WORKLET = """
async ([rate, frequency]) => {
  const context = new OfflineAudioContext(1, rate, rate);  // one second
  await context.audioWorklet.addModule("/console/pcm16-worklet.js");
  const node = new AudioWorkletNode(context, "pcm16-downsampler", { processorOptions: { frameMs: 100 } });
  const frames = [];
  node.port.onmessage = (event) => frames.push(new Int16Array(event.data));
  const tone = new OscillatorNode(context, { frequency });
  tone.connect(new GainNode(context, { gain: 0.5 })).connect(node);
  node.connect(context.destination);
  tone.start();
  await context.startRendering();
  await new Promise((resolve) => setTimeout(resolve, 300));  // the last frames' messages
  const samples = frames.flatMap((frame) => [...frame]).slice(800);  // past the filter's start
  let crossings = 0, power = 0;
  for (let i = 0; i < samples.length; i++) {
    power += (samples[i] / 32768) ** 2;
    if (i && (samples[i - 1] < 0) !== (samples[i] < 0)) crossings++;
  }
  return { samples: samples.length + 800, rms: Math.sqrt(power / samples.length), crossings, seconds: samples.length / 16000 };
}
"""


@pytest.mark.parametrize("rate", [44100, 48000])
def test_worklet_downsamples_to_16khz_without_aliasing(stack, browser, rate):
    page = browser.new_page()
    page.goto(stack.gateway_url + "/")
    speech = page.evaluate(_TONE_THROUGH_WORKLET, [rate, 440])
    # 100 ms frames of 16 kHz: one second of them, less the last if the filter's delay holds it back.
    assert speech["samples"] in (9 * 1600, 10 * 1600)
    assert speech["crossings"] / speech["seconds"] == pytest.approx(2 * 440, rel=0.01)
    assert speech["rms"] == pytest.approx(0.5 / 2**0.5, rel=0.02)
    # A tone above 8 kHz has no place in 16 kHz audio: it must be filtered out, not folded down.
    alias = page.evaluate(_TONE_THROUGH_WORKLET, [rate, 11000])
    assert alias["rms"] < 0.01 * speech["rms"]
    page.close()


def test_names_of_enrolled_voices_are_shown(stack, browser):
    """The speaker registry names voices in the events; the view shows names where given, numbers elsewhere."""
    page = browser.new_page(viewport=DESKTOP)
    page.goto(stack.gateway_url + "/#watch")
    page.evaluate(
        """async () => {
          const { SessionView } = await import("/console/session-view.js");
          const root = document.querySelector("[data-part=watch-view]");
          const view = new SessionView(root);
          view.reset("named-session");
          view.handle({ event: "speaker", currentSpeakerId: 0, activeSpeakerIds: [0, 1],
                        speakingTimeMs: { "0": 1500, "1": 500 },
                        namedSpeakers: { "0": { speakerName: "Ada", profileId: "p-ada" } } });
          view.handle({ event: "report", speakers: [{ id: 0, totalTimeMs: 1500, speakerName: "Ada" },
                                                    { id: 1, totalTimeMs: 500 }],
                        turns: [{ speakerId: 0, startMs: 0, endMs: 1500 }, { speakerId: 1, startMs: 1000, endMs: 1500 }] });
        }"""
    )
    names = page.eval_on_selector_all(
        "[data-part=watch-view] [data-part=report-rows] .name", "ns => ns.map(n => n.textContent)"
    )
    assert names == ["Ada", "Speaker 1"]
    page.close()


def test_a_file_played_as_the_microphone_streams_to_its_end(stack, browser, conversation, tmp_path):
    clip = tmp_path / "opening.wav"
    sf.write(clip, conversation.audio[: 8 * conversation.sample_rate], conversation.sample_rate)  # its first two turns
    page = browser.new_page(viewport=DESKTOP)
    page.goto(stack.gateway_url + "/")
    page.on("filechooser", lambda chooser: chooser.set_files(clip))  # the radio opens the file picker
    page.get_by_label("Play a file as the microphone").check()
    page.get_by_role("button", name="Start").click()
    # No Stop: the session ends when the file has played, and the report follows.
    page.wait_for_function(f"document.querySelector('{LIVE_VIEW}').dataset.state === 'reported'", timeout=90_000)
    sent_ms = int(page.eval_on_selector("[data-panel=live]", "p => p.dataset.sentMs"))
    assert sent_ms == pytest.approx(8000, abs=150)
    assert rows(page, LIVE_VIEW, "report-rows")
    page.close()


def test_refused_microphone_is_shown(stack, browser, launch_chromium):
    page = launch_chromium(None).new_page(viewport=DESKTOP)
    page.goto(stack.gateway_url + "/")
    page.get_by_role("button", name="Start").click()
    alert = page.get_by_role("alert")
    alert.wait_for(timeout=10_000)
    assert "Microphone access was refused" in alert.inner_text()
    assert page.get_by_role("button", name="Start").is_enabled()


def test_gateway_stopping_mid_session_is_shown(stack, browser, artifacts):
    """Runs last: it stops the module's gateway."""
    live = browser.new_page(viewport=DESKTOP)
    live.goto(stack.gateway_url + "/")
    # Keyboard only: Tab reaches the Start button and Enter starts the session.
    for _ in range(12):
        live.keyboard.press("Tab")
        if live.evaluate("document.activeElement.dataset.part") == "live-toggle":
            break
    else:
        pytest.fail("Tab never reached the Start button")
    live.keyboard.press("Enter")
    live.wait_for_function(f"document.querySelector('{LIVE_VIEW}').dataset.speakers >= 1", timeout=60_000)
    session_id = live.eval_on_selector(LIVE_VIEW, "e => e.dataset.session")
    watch = browser.new_page(viewport=DESKTOP)
    watch.goto(f"{stack.gateway_url}/#watch/{session_id}")
    watch.wait_for_function("document.querySelector('[data-panel=watch]').dataset.state === 'watching'")
    stack.kill("gateway", signal.SIGTERM)
    for page in (live, watch):
        page.get_by_role("alert").filter(has_text="gateway").wait_for(timeout=30_000)
    live.screenshot(path=artifacts / "console-gateway-gone.png")
    assert "shutting down" in live.get_by_role("alert").inner_text()
    assert live.get_by_role("button", name="Start").is_enabled()
    assert view_state(live, LIVE_VIEW)["state"] == "halted"
