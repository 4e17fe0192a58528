"""The stage chain run in one process over one recording, with no broker.

The profile's stages (`pipeline.stages.chains`), called exactly as the Faust agents call
them and fed in the order the bus would feed them: a producer's chunks and stop
(`pipeline.producers.chunking`) into the segment stage, whatever it emits through the embed
stage, and on into the cluster stage.
For tuning, evaluation, the stage benchmark and tests of the stage math.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from pipeline.config import Profile
from pipeline.producers.chunking import CHUNK_SAMPLES, session_records
from pipeline.stages.base import STAGES, ClusterOutput, ClusterStage
from pipeline.stages.chains import build_chain
from topics.messages import AudioChunk, BusMessage, SessionReport, SessionStart, SessionStop, SpeakerTurn, SpeakerUpdate

Result = TypeVar("Result")


@dataclass
class ChainResult:
    updates: list[SpeakerUpdate] = field(default_factory=list)
    turns: list[SpeakerTurn] = field(default_factory=list)
    report: SessionReport | None = None
    # CPU seconds (time.process_time) each stage spent on the recording.
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


class InProcessChain:
    def __init__(self, profile: Profile) -> None:
        self.segment, self.embed, self.cluster = build_chain(profile)

    def run(self, pcm: np.ndarray, start: SessionStart, chunk_samples: int = CHUNK_SAMPLES) -> ChainResult:
        """Stream int16 PCM through the segment, embed and cluster stages in chunks."""
        result = ChainResult()
        return self.cluster_stream(self.embedded_stream(pcm, start, chunk_samples, result), start, result=result)

    def run_concurrent(
        self, pcms: list[np.ndarray], starts: list[SessionStart], chunk_samples: int = CHUNK_SAMPLES
    ) -> tuple[list[ChainResult], dict[str, float]]:
        """Several live streams at once, batched across them the way the workers batch.

        Each tick takes the next chunk of every stream still going: the segment stage pushes them
        together (`push_many`), the embed stage embeds everything they completed in one batch, and
        each stream's outputs go through its own cluster state. Returns each stream's result and
        the CPU seconds each stage spent on all of them.
        """
        spent = dict.fromkeys(STAGES, 0.0)
        timing = ChainResult(cpu_s=spent)
        results = [ChainResult() for _ in pcms]
        segment_states = [self.segment.start(start) for start in starts]
        cluster_states = [self.cluster.start(start) for start in starts]
        records = [iter(session_records(pcm, start, chunk_samples)) for pcm, start in zip(pcms, starts)]
        live = list(range(len(pcms)))
        while live:
            ticked = [(i, next(records[i])) for i in live]
            chunks = [(i, m) for i, m in ticked if isinstance(m, AudioChunk)]
            pushed = self._timed(
                timing, "segment", self.segment.push_many, [(segment_states[i], m, 0) for i, m in chunks]
            )
            outputs: list[tuple[int, BusMessage]] = []
            for (i, _), result in zip(chunks, pushed):
                if isinstance(result, Exception):
                    raise result
                outputs += [(i, m) for m in result]
            for i, stop in ticked:
                if isinstance(stop, SessionStop):
                    outputs += [
                        (i, m) for m in self._timed(timing, "segment", self.segment.finish, segment_states[i], stop)
                    ]
                    live.remove(i)
            embedded = self._embed(timing, [m for _, m in outputs])
            for (i, _), message in zip(outputs, embedded):
                if isinstance(message, self.cluster.input_type | SessionStop):
                    call = self.cluster.finish if isinstance(message, SessionStop) else self.cluster.push
                    for output in self._timed(timing, "cluster", call, cluster_states[i], message):
                        self._record(results[i], output)
        return results, spent

    def embedded_stream(
        self,
        pcm: np.ndarray,
        start: SessionStart,
        chunk_samples: int = CHUNK_SAMPLES,
        result: ChainResult | None = None,
    ) -> list[BusMessage]:
        """What the cluster stage receives for this recording: the segment and embed stages' part, done once.

        Neither stage looks at the speaker count or the label latency, so one stream serves
        every cluster stage and every count scored on the recording. Their CPU time goes to `result`.
        """
        result = result if result is not None else ChainResult()
        segment_state = self.segment.start(start)
        stream: list[BusMessage] = []
        for message in session_records(pcm, start, chunk_samples):
            if isinstance(message, AudioChunk):
                segmented = self._timed(result, "segment", self.segment.push, segment_state, message, 0)
            else:
                segmented = self._timed(result, "segment", self.segment.finish, segment_state, message)
            stream += [
                m for m in self._embed(result, segmented) if isinstance(m, self.cluster.input_type | SessionStop)
            ]
        return stream

    def cluster_stream(
        self,
        stream: list[BusMessage],
        start: SessionStart,
        cluster: ClusterStage[Any] | None = None,
        result: ChainResult | None = None,
    ) -> ChainResult:
        """The cluster stage's outputs over an embedded stream (this chain's cluster stage, or another of its role)."""
        cluster = cluster or self.cluster
        result = result if result is not None else ChainResult()
        state = cluster.start(start)
        for message in stream:
            call = cluster.finish if isinstance(message, SessionStop) else cluster.push
            for output in self._timed(result, "cluster", call, state, message):
                self._record(result, output)
        return result

    def _embed(self, result: ChainResult, messages: list[BusMessage]) -> list[BusMessage]:
        """The messages with those of the embed stage's input type embedded, in order, as the embed agent sends them."""
        work = self.embed.input_type
        embedded = iter(self._timed(result, "embed", self.embed.process, [m for m in messages if isinstance(m, work)]))
        return [next(embedded) if isinstance(m, work) else m for m in messages]

    @staticmethod
    def _timed(result: ChainResult, stage: str, call: Callable[..., Result], *args: Any) -> Result:
        began = time.process_time()
        outputs = call(*args)
        result.cpu_s[stage] += time.process_time() - began
        return outputs

    @staticmethod
    def _record(result: ChainResult, output: ClusterOutput) -> None:
        if isinstance(output, SpeakerUpdate):
            result.updates.append(output)
        elif isinstance(output, SpeakerTurn):
            result.turns.append(output)
        else:
            result.report = output
