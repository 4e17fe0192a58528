"""The demo: a scripted espeak-ng conversation, with interruptions, streamed live through the whole dataflow.

The live view shows who is talking, both speakers where two talk at once; at the end the
report is drawn as a timeline under the script's reference, then as a talk-time table.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from dataclasses import replace
from pathlib import Path

from pipeline.devstack.stack import Stack
from pipeline.devstack.synthetic import THREE_SPEAKER_SCRIPT, TWO_SPEAKER_SCRIPT, Turn, synthesize
from pipeline.evaluation.talktime import compare, format_table, report_turns
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import LiveView, report_from_event, stream_session
from pipeline.rttm import RttmTurn
from pipeline.settings import Settings
from topics import SessionReport

# Interruptions: turn index -> seconds it starts before the previous turn ends.
DEMO_OVERLAPS = {3: 1.0, 6: 0.8, 9: 1.2}
# The timeline is at most this many characters wide, each at least this many seconds.
TIMELINE_WIDTH = 80
TIMELINE_MIN_CELL_S = 0.25


def demo_script(speakers: int) -> list[Turn]:
    script = TWO_SPEAKER_SCRIPT if speakers == 2 else THREE_SPEAKER_SCRIPT
    return [replace(turn, overlap_s=DEMO_OVERLAPS.get(i, 0.0)) for i, turn in enumerate(script)]


def run_demo(speakers: int = 2, settings: Settings | None = None) -> int:
    settings = settings or Settings()
    script = demo_script(speakers)
    print(f"Synthesizing a {speakers}-voice conversation with espeak-ng ...", flush=True)
    conversation = synthesize(script)
    overlap_s = overlapped_s(conversation.reference_turns())
    print(
        f"  {conversation.duration_s:.1f} s of audio, {len(script)} turns, {overlap_s:.1f} s of it two voices at once"
    )
    print(f"Starting Kafka, the segment/embed/cluster workers ({settings.profile} profile) and the gateway ...")
    with (
        tempfile.TemporaryDirectory(prefix="speakerflow-demo-") as run_dir,
        Stack(Path(run_dir), settings) as stack,
    ):
        url = stack.session_url
        print(f"Streaming in real time through {url}")
        print(f"Watch it in the web console: {stack.gateway_url}/#watch\n", flush=True)
        report_event = asyncio.run(
            stream_session(url, float_to_pcm16(conversation.audio), num_speakers=speakers, on_event=LiveView())
        )
    report = report_from_event("demo", report_event)
    reference = conversation.reference_turns()
    print("\n\nThe final report under the script's reference (speakers matched by turn overlap):\n")
    print(format_timeline(reference, report, conversation.duration_s))
    print()
    print(format_table(compare(reference, report)))
    return 0


def overlapped_s(turns: list[RttmTurn]) -> float:
    """Seconds during which two or more of the turns' speakers talk."""
    return sum(t.end_s - t.start_s for t in overlaps(turns))


def overlaps(turns: list[RttmTurn]) -> list[RttmTurn]:
    """Where two or more of the turns' speakers talk at once, as turns of no one in particular."""
    edges = sorted([(t.start_s, 1) for t in turns] + [(t.end_s, -1) for t in turns])
    spans: list[RttmTurn] = []
    talking, since = 0, 0.0
    for time_s, change in edges:
        if talking >= 2 and time_s > since:
            spans.append(RttmTurn("overlap", since, time_s))
        talking += change
        since = time_s
    return spans


def format_timeline(reference: list[RttmTurn], report: SessionReport, duration_s: float) -> str:
    """Each reference speaker's row above its reported speaker's, and a row where two talk at once in each."""
    cell_s = max(
        TIMELINE_MIN_CELL_S, math.ceil(duration_s / TIMELINE_WIDTH / TIMELINE_MIN_CELL_S) * TIMELINE_MIN_CELL_S
    )
    cells = math.ceil(duration_s / cell_s)
    reported = report_turns(report)
    matched = {row.reference: row.hypothesis for row in compare(reference, report)}
    rows: list[tuple[str, list[RttmTurn]]] = []
    for speaker, hypothesis in matched.items():
        rows.append((f"reference {speaker}", [t for t in reference if t.speaker == speaker]))
        label = "-" if hypothesis is None else str(hypothesis)
        rows.append((f"  report  {label}", [t for t in reported if t.speaker == label]))
    for extra in sorted({t.speaker for t in reported} - {str(h) for h in matched.values()}):
        rows.append((f"  report  {extra}", [t for t in reported if t.speaker == extra]))
    rows.append(("reference overlap", overlaps(reference)))
    rows.append(("  report  overlap", overlaps(reported)))

    width = max(len(name) for name, _ in rows) + 2
    ticks = [" "] * cells
    every = max(1, round(10 / cell_s))  # a time mark about every 10 s
    for cell in range(0, cells, every):
        mark = f"{cell * cell_s:g}s"
        if cell + len(mark) <= cells:
            ticks[cell : cell + len(mark)] = mark
    lines = [f"{'':<{width}}{''.join(ticks)}".rstrip()]
    lines += [f"{name:<{width}}{_bar(turns, cells, cell_s)}" for name, turns in rows]
    lines.append(f"one character = {cell_s:g} s: █ talking for at least half of it, · for less")
    return "\n".join(lines)


def _bar(turns: list[RttmTurn], cells: int, cell_s: float) -> str:
    covered = [0.0] * cells
    for turn in turns:
        for cell in range(int(turn.start_s // cell_s), min(cells, math.ceil(turn.end_s / cell_s))):
            lo, hi = cell * cell_s, (cell + 1) * cell_s
            covered[cell] += max(0.0, min(hi, turn.end_s) - max(lo, turn.start_s))
    return "".join("█" if c >= cell_s / 2 else "·" if c > 0 else " " for c in covered).rstrip()
