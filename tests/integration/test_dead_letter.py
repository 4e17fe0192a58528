"""A poisoned session on the real broker: its record is dead-lettered and the sessions beside it finish.

The poison is a cluster-stage session whose stored state was written by another version of the
stage (a StateVersionError on restore), put in the table's changelog before the workers start, so
the worker rebuilds it as it would after an upgrade. Its neighbours share its partition, so a
stage that stopped or stalled on it would never report them.
"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.agents.app import build_app, changelog_specs
from pipeline.agents.session_states import session_states
from pipeline.bus import ensure_topics, new_producer, publish, tail_consumer
from pipeline.devstack.scaleout import partition_of, scrape, total
from pipeline.devstack.synthetic import script_for, synthesize
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import stream_session
from pipeline.settings import Settings
from topics import DEAD_LETTERS, STEP_EMBEDDINGS, SessionStop, decode

POISONED = "dl-poisoned"
# A state as an older cluster stage might have stored it: not this version's envelope.
OLD_STATE = b'{"v":0,"speakers":[]}'


def cluster_changelog(bootstrap: str):
    settings = Settings(kafka=bootstrap)
    app = build_app("cluster", settings)
    session_states(app, "cluster-sessions", STEP_EMBEDDINGS, bytes, settings)
    (spec,) = changelog_specs(app)
    return spec


def neighbours(count: int) -> list[str]:
    """Session ids on the poisoned session's partition."""
    target = partition_of(POISONED)
    ids = (f"dl-neighbour-{i}" for i in range(10_000))
    return [session_id for session_id in ids if partition_of(session_id) == target][:count]


async def write_old_state(bootstrap: str) -> None:
    spec = cluster_changelog(bootstrap)
    await ensure_topics(bootstrap, [spec])
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(spec.name, key=POISONED.encode(), value=OLD_STATE)
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def stack(local_stack, bootstrap):
    asyncio.run(write_old_state(bootstrap))
    with local_stack("dead-letter", report_timeout_s=120) as running:
        yield running


async def poison_then_neighbours(bootstrap: str, url: str, session_ids: list[str]) -> tuple[list[dict], object]:
    dead_letters = await tail_consumer(bootstrap, [DEAD_LETTERS])
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        # Ahead of the neighbours' records on their partition: a stage stopped here would never reach them.
        await publish(producer, STEP_EMBEDDINGS, SessionStop(session_id=POISONED, seq=9, offset=0, producer="test"))
        conversations = [synthesize(script_for(2, turns=6, seed=seed), seed=seed) for seed in range(len(session_ids))]
        reports = await asyncio.gather(
            *[
                stream_session(url, float_to_pcm16(c.audio), num_speakers=2, realtime=False, session_id=session_id)
                for c, session_id in zip(conversations, session_ids)
            ]
        )
        letter = await asyncio.wait_for(dead_letters.getone(), timeout=60)
        return reports, letter
    finally:
        await producer.stop()
        await dead_letters.stop()


def test_a_poisoned_record_is_dead_lettered_while_its_neighbours_finish(stack, bootstrap):
    session_ids = neighbours(2)
    reports, letter = asyncio.run(poison_then_neighbours(bootstrap, stack.session_url, session_ids))

    for report in reports:
        assert report["event"] == "report" and len(report["speakers"]) == 2, report
    headers = dict(letter.headers)
    assert letter.key == POISONED.encode()
    assert (headers["dl-stage"], headers["dl-error-type"]) == (b"cluster", b"StateVersionError")
    assert (headers["dl-topic"], int(headers["dl-partition"])) == (
        STEP_EMBEDDINGS.name.encode(),
        partition_of(POISONED),
    )
    # The dead letter is the record as it was read: it decodes as the stop that was sent.
    assert decode(letter.key, letter.value, letter.headers) == SessionStop(
        session_id=POISONED, seq=9, offset=0, producer="test"
    )
    samples = scrape(stack.metrics_url("worker-cluster-0"))
    assert total(samples, "speakerflow_errors_total", stage="cluster", kind="processing") >= 1
