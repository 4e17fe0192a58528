"""How soon a change of the speaker registry reaches a live session, measured on a fresh local stack.

One conversation of the enrolment dev set streams in real time over the gateway. Mid-session one
of its readers is enrolled through the API; the figure is the time from the API's answer to the
first speaker event that names that reader. Later the profile is deleted; the second figure is
the time from the deletion's answer to the first speaker event without the name.

    python -m pipeline.devstack.registry_benchmark [ENROLLMENT_DIR] [--conversation enc01 --reader LS1116]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pipeline.devstack.stack import Stack, free_port
from pipeline.producers.audio_file import load_pcm16
from pipeline.producers.gateway_client import stream_session
from pipeline.producers.gateway_http import SpeakersClient
from pipeline.settings import Settings
from topics.messages import SAMPLE_RATE

NAME = "Enrolled mid-session"


async def measure(stack: Stack, pcm, clip: Path, enrol_at_s: float, delete_at_s: float) -> dict[str, float]:
    client = SpeakersClient(stack.gateway_url)
    marks: dict[str, float] = {}
    seen: dict[str, float] = {}
    profile: dict = {}

    def on_event(event: dict) -> None:
        if event.get("event") != "speaker":
            return
        named = NAME in {n["speakerName"] for n in event.get("namedSpeakers", {}).values()}
        now = time.monotonic()
        if named and "enrolled" in marks and "named" not in seen:
            seen["named"] = now
        if not named and "deleted" in marks and "unnamed" not in seen:
            seen["unnamed"] = now

    async def change_registry() -> None:
        began = time.monotonic()
        await asyncio.sleep(enrol_at_s - (time.monotonic() - began))
        profile.update(await asyncio.to_thread(client.enroll, NAME, [clip]))
        marks["enrolled"] = time.monotonic()
        await asyncio.sleep(max(0.0, delete_at_s - (time.monotonic() - began)))
        await asyncio.to_thread(client.delete, profile["id"])
        marks["deleted"] = time.monotonic()

    began = time.monotonic()
    changes = asyncio.create_task(change_registry())
    await stream_session(stack.session_url, pcm, realtime=True, on_event=on_event)
    await changes
    return {
        "enrolment_reached_s": seen["named"] - marks["enrolled"] if "named" in seen else float("nan"),
        "deletion_reached_s": seen["unnamed"] - marks["deleted"] if "unnamed" in seen else float("nan"),
        "enrolled_at_s": marks["enrolled"] - began,
        "deleted_at_s": marks["deleted"] - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("enrollment", nargs="?", type=Path, default=Path("../shared/data/enrollment"))
    parser.add_argument("--conversation", default="enc01")
    parser.add_argument("--reader", default="LS1116", help="an enrolled reader of the conversation")
    parser.add_argument("--enrol-at", type=float, default=15.0, help="seconds into the session")
    parser.add_argument("--delete-at", type=float, default=32.0, help="seconds into the session")
    args = parser.parse_args()
    pcm = load_pcm16(args.enrollment / "audio" / f"{args.conversation}.flac")
    clip = args.enrollment / "enroll" / f"{args.reader}.flac"
    settings = replace(Settings.from_env(), gateway_port=free_port())
    with (
        tempfile.TemporaryDirectory(prefix="speakerflow-registry-") as run_dir,
        Stack(Path(run_dir), settings) as stack,
    ):
        figures = asyncio.run(measure(stack, pcm, clip, args.enrol_at, args.delete_at))
    print(
        f"{args.conversation} ({len(pcm) / SAMPLE_RATE:.0f} s, real time), {args.reader} enrolled "
        f"(answered at {figures['enrolled_at_s']:.1f} s) and deleted (answered at {figures['deleted_at_s']:.1f} s), "
        f"profile {settings.profile}: "
        f"named {figures['enrolment_reached_s']:.2f} s after the enrolment's answer, "
        f"unnamed {figures['deletion_reached_s']:.2f} s after the deletion's"
    )


if __name__ == "__main__":
    main()
