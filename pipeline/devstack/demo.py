"""The demo: a scripted espeak-ng conversation streamed live through the whole dataflow."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from pipeline.devstack.stack import Stack
from pipeline.devstack.synthetic import THREE_SPEAKER_SCRIPT, TWO_SPEAKER_SCRIPT, synthesize
from pipeline.evaluation.talktime import Segment, compare, format_table
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import stream_session
from pipeline.settings import Settings
from topics import ReportedSpeaker, SessionReport
from topics.messages import ReportedTurn


class LiveView:
    """Prints the live speaker updates: one rewritten line on a terminal, a line per second otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last_printed_s = -1

    def __call__(self, event: dict) -> None:
        if event.get("event") != "speaker":
            return
        times = "  ".join(f"spk{k}: {v / 1000:5.1f}s" for k, v in sorted(event["speakingTimeMs"].items()))
        current = event["currentSpeakerId"]
        active = event.get("activeSpeakerIds") or ([] if current is None else [current])
        now = " + ".join(f"spk{s}" for s in active) if active else "silence"
        line = f"now: {now:<12} talk time  {times}"
        if self.tty:
            print(f"\r{line:<100}", end="", flush=True)
        else:
            seconds = sum(event["speakingTimeMs"].values()) // 1000
            if seconds != self.last_printed_s:
                self.last_printed_s = seconds
                print(line, flush=True)


def report_from_event(session_id: str, event: dict) -> SessionReport:
    return SessionReport(
        session_id=session_id,
        duration_ms=0,
        speakers=[ReportedSpeaker(id=s["id"], total_time_ms=s["totalTimeMs"]) for s in event["speakers"]],
        turns=[ReportedTurn(speaker=t["speakerId"], start_ms=t["startMs"], end_ms=t["endMs"]) for t in event["turns"]],
    )


def run_demo(speakers: int = 2, settings: Settings | None = None) -> int:
    script = TWO_SPEAKER_SCRIPT if speakers == 2 else THREE_SPEAKER_SCRIPT
    print(f"Synthesizing a {speakers}-voice conversation with espeak-ng ...", flush=True)
    conversation = synthesize(script)
    print(f"  {conversation.duration_s:.1f} s of audio, {len(script)} turns", flush=True)
    print("Starting Kafka, the segment/embed/cluster workers and the gateway ...", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="speakerflow-demo-") as run_dir,
        Stack(Path(run_dir), settings or Settings()) as stack,
    ):
        url = stack.session_url
        print(f"Streaming in real time through {url}\n", flush=True)
        report_event = asyncio.run(
            stream_session(url, float_to_pcm16(conversation.audio), num_speakers=speakers, on_event=LiveView())
        )
    print("\n\nFinal report next to the script's reference (speakers matched by turn overlap):\n")
    reference = [Segment(str(s.speaker), s.start_s, s.end_s) for s in conversation.segments]
    print(format_table(compare(reference, report_from_event("demo", report_event))))
    return 0
