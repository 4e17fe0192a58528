"""A finished session's report, read back from the bus and written as RTTM, JSON, CSV or text.

Reports live on the compacted `speakerflow.session-reports` topic, keyed by
session id, so the newest report of any session stays readable for as long as
the topic exists. Every partition is read (compaction keeps them small) rather
than guessing which one the producing worker's partitioner chose.
"""

from __future__ import annotations

import csv
import io

from aiokafka import TopicPartition

from pipeline.bus import PLAINTEXT, new_consumer
from pipeline.rttm import format_rttm, span_turns
from pipeline.settings import KafkaSecurity
from topics import SESSION_REPORTS, DecodeError, SessionReport, decode

FORMATS = ("rttm", "json", "csv", "text")


class ReportNotFound(LookupError):
    pass


async def fetch_report(bootstrap: str, session_id: str, security: KafkaSecurity = PLAINTEXT) -> SessionReport:
    """The newest report of the session; ReportNotFound if it has none."""
    # Reading from the start must be the consumer's default: a seek issued right after
    # assign() can lose the race with the default reset to the end.
    consumer = new_consumer(bootstrap, security, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(SESSION_REPORTS.name, p) for p in range(SESSION_REPORTS.partitions)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        found: SessionReport | None = None
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.key != session_id.encode():
                        continue
                    try:
                        message = decode(record.key, record.value, record.headers)
                    except DecodeError:
                        continue
                    if isinstance(message, SessionReport):
                        found = message
    finally:
        await consumer.stop()
    if found is None:
        raise ReportNotFound(f"no report for session {session_id!r} on {SESSION_REPORTS.name}")
    return found


def format_report(report: SessionReport, fmt: str) -> str:
    if fmt == "json":
        return report.model_dump_json(indent=2) + "\n"
    if fmt == "rttm":
        return format_rttm(report.session_id, span_turns(report.turns))
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["speaker", "start_s", "end_s", "duration_s"])
        for t in report.turns:
            writer.writerow(
                [
                    t.speaker,
                    f"{t.start_ms / 1000:.3f}",
                    f"{t.end_ms / 1000:.3f}",
                    f"{(t.end_ms - t.start_ms) / 1000:.3f}",
                ]
            )
        return out.getvalue()
    if fmt == "text":
        lines = [f"session {report.session_id}: {report.duration_ms / 1000:.1f} s, {len(report.speakers)} speakers"]
        lines += [f"  speaker {s.id}: {s.total_time_ms / 1000:.1f} s" for s in report.speakers]
        lines += [f"  {t.start_ms / 1000:8.2f} - {t.end_ms / 1000:8.2f}  speaker {t.speaker}" for t in report.turns]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
