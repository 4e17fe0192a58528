"""The demo: a scripted espeak-ng conversation streamed live through the whole dataflow."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from pipeline.devstack.stack import Stack
from pipeline.devstack.synthetic import THREE_SPEAKER_SCRIPT, TWO_SPEAKER_SCRIPT, synthesize
from pipeline.evaluation.talktime import compare, format_table
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import LiveView, report_from_event, stream_session
from pipeline.settings import Settings


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
    print(format_table(compare(conversation.reference_turns(), report_from_event("demo", report_event))))
    return 0
