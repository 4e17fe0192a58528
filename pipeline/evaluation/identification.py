"""Known-speaker identification on a labelled folder: the enrolled readers named, the unknown ones not.

Every clip of the enrolment folder (`<label>.flac`, any audio format the project reads) is
enrolled under its stem, as the gateway would enrol it (`pipeline.stages.speaker_enrolment`),
into a registry held in memory; each recording then runs through the profile's stages in one
process (`InProcessChain`) against that registry, which nothing changes between recordings.
Scored as the enrolment set's README says, pooled over the recordings:

- identification: the share of the enrolled readers' reference speech labelled with their own
  name (10 ms grid, no collar, overlap counted for every reader in it); live after each reader's
  first `skip_first_s` of speech in each recording, and in the final report;
- wrong name: the share of it labelled with another enrolled name whose owner is silent then;
- false accept: the share of the unknown readers' speech labelled with an enrolled name whose
  owner is silent then;
- DER (collar as given), with identification on and off: names must not cost segmentation.

The live label of a span is the name its update carried then (a speaker named later is
unknown until then); the report's, the name the report gives its speaker.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.config import Profile
from pipeline.evaluation.chain import ChainResult, InProcessChain
from pipeline.evaluation.der import AUDIO_SUFFIXES, EvaluationError, annotation, find_recordings, read_uem
from pipeline.producers.audio_file import load_pcm16
from pipeline.rttm import RttmTurn, read_rttm
from pipeline.stages.chains import build_cluster
from pipeline.stages.speaker_enrolment import SpeakerEnroller, combine
from pipeline.stages.speaker_naming import ProfileRegistry
from topics.messages import SAMPLE_RATE, SessionStart
from topics.speaker_profiles import SpeakerProfile

STEP_S = 0.01  # the scoring grid


def enrol_folder(folder: Path, enroller: SpeakerEnroller | None = None) -> ProfileRegistry:
    """A registry with one profile per audio file directly in `folder` (or its `enroll/`), named by its stem."""
    if (folder / "enroll").is_dir():
        folder = folder / "enroll"
    clips = sorted(p for p in folder.iterdir() if p.suffix.lower() in (*AUDIO_SUFFIXES, ".mp3", ".ogg"))
    if not clips:
        raise EvaluationError(f"no enrolment clips in {folder}")
    enroller = enroller or SpeakerEnroller()
    registry = ProfileRegistry()
    for clip in clips:
        embedded = enroller.embed(load_pcm16(clip))
        registry.put(
            SpeakerProfile(
                profile_id=clip.stem,
                name=clip.stem,
                embeddings=combine([embedded]),
                speech_s=embedded.speech_s,
                clips=1,
                created_ms=0,
                updated_ms=0,
            )
        )
    return registry


def live_turns(result: ChainResult) -> list[RttmTurn]:
    """The live labels: each update's spans, under the name the update gave their speaker (else `spk<N>`)."""
    turns = []
    for update in result.updates:
        for span in update.spans:
            named = update.named.get(span.speaker)
            label = named.speaker_name if named is not None else f"spk{span.speaker}"
            turns.append(RttmTurn(label, span.start_ms / 1000, span.end_ms / 1000))
    return turns


def report_turns(result: ChainResult) -> list[RttmTurn]:
    report = result.report
    if report is None:
        return []
    names = {s.id: s.speaker_name for s in report.speakers}
    return [
        RttmTurn(names.get(t.speaker) or f"spk{t.speaker}", t.start_ms / 1000, t.end_ms / 1000) for t in report.turns
    ]


def _frames(turns: list[RttmTurn], count: int) -> dict[str, np.ndarray]:
    active: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(count, bool))
    for turn in turns:
        active[turn.speaker][int(round(turn.start_s / STEP_S)) : int(round(turn.end_s / STEP_S))] = True
    return active


class IdentificationBoard:
    """Identification, wrong name and false accept (frames), and DER, of one way of labelling, pooled."""

    def __init__(self, names: set[str], collar: float, skip_first_s: float) -> None:
        from pyannote.metrics.diarization import DiarizationErrorRate

        self.names = names
        self.skip_first_s = skip_first_s
        # reader -> [speech, right name, wrong name, named right by the best one-to-one naming of the labels]
        self.identified = defaultdict(lambda: np.zeros(4))
        self.accepted = defaultdict(lambda: np.zeros(2))  # unknown reader -> [speech, given an enrolled name]
        self.der = DiarizationErrorRate(collar=collar, skip_overlap=False)

    def add(self, uri: str, reference: list[RttmTurn], hypothesis: list[RttmTurn], duration_s: float, uem) -> None:
        count = int(round(duration_s / STEP_S)) + 1
        ref, hyp = _frames(reference, count), _frames(hypothesis, count)
        reference_labels, hypothesis_labels = annotation(uri, reference), annotation(uri, hypothesis).support()
        # The ceiling: each label named after the reader it covers best, as DER maps them.
        best = self.der.optimal_mapping(reference_labels, hypothesis_labels)
        best_cover: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(count, bool))
        for label, reader in best.items():
            best_cover[reader] |= hyp[label]
        stray = {name: hyp[name] & ~ref[name] for name in self.names if name in hyp}
        for reader, speech in list(ref.items()):
            if reader in self.names:
                scored = speech & (np.cumsum(speech) * STEP_S > self.skip_first_s)
                right = scored & hyp[reader] if reader in hyp else np.zeros(count, bool)
                wrong = np.zeros(count, bool)
                for name, frames in stray.items():
                    if name != reader:
                        wrong |= frames
                ceiling = (scored & best_cover[reader]).sum()
                self.identified[reader] += [scored.sum(), right.sum(), (wrong & scored & ~right).sum(), ceiling]
            else:
                named = np.zeros(count, bool)
                for frames in stray.values():
                    named |= frames
                self.accepted[reader] += [speech.sum(), (named & speech).sum()]
        self.der(reference_labels, hypothesis_labels, uem=uem)

    def summary(self) -> dict:
        speech, right, wrong, ceiling = np.sum(list(self.identified.values()), axis=0) if self.identified else (0,) * 4
        unknown, named = np.sum(list(self.accepted.values()), axis=0) if self.accepted else (0, 0)
        # None where the recordings hold no such speech (a set of strangers only has no identification to score).
        return {
            "identification": float(right / speech) if speech else None,
            "wrong_name": float(wrong / speech) if speech else None,
            "ceiling": float(ceiling / speech) if speech else None,
            "false_accept": float(named / unknown) if unknown else None,
            "der": abs(self.der),
            "readers": {r: float(v[1] / v[0]) if v[0] else 0.0 for r, v in sorted(self.identified.items())},
        }


def evaluate_identification(
    root: Path,
    enroll: Path,
    profile: Profile,
    thresholds: tuple[float, ...] = (),
    collar: float = 0.25,
    skip_first_s: float = 5.0,
    exclude: tuple[str, ...] = (),
    progress: bool = True,
) -> list[dict]:
    """One row per threshold (the profile's own when none given): live and report identification, and DER on and off."""
    from tqdm import tqdm

    registry = enrol_folder(enroll)
    names = {p.name for p in registry.profiles()}
    thresholds = thresholds or (profile.naming.min_similarity,)
    stages = {
        t: build_cluster(
            dataclasses.replace(profile, naming=dataclasses.replace(profile.naming, min_similarity=t)), registry
        )
        for t in thresholds
    }
    plain = build_cluster(profile)
    boards = {
        t: {kind: IdentificationBoard(names, collar, skip) for kind, skip in (("live", skip_first_s), ("report", 0.0))}
        for t in thresholds
    }
    off = {kind: IdentificationBoard(names, collar, skip) for kind, skip in (("live", skip_first_s), ("report", 0.0))}
    chain = InProcessChain(profile)
    recordings = find_recordings(root, exclude)
    for recording in tqdm(
        recordings, desc=f"identify {profile.name}", unit="file", disable=not progress, file=sys.stderr
    ):
        pcm = load_pcm16(recording.audio)
        duration_s = len(pcm) / SAMPLE_RATE
        reference = read_rttm(recording.rttm)
        uem = read_uem(recording.uem, duration_s)
        start = SessionStart(session_id=f"identify-{recording.uri}")
        stream = chain.embedded_stream(pcm, start)
        result = chain.cluster_stream(stream, start, plain)
        off["live"].add(recording.uri, reference, live_turns(result), duration_s, uem)
        off["report"].add(recording.uri, reference, report_turns(result), duration_s, uem)
        for threshold, stage in stages.items():
            result = chain.cluster_stream(stream, start, stage)
            boards[threshold]["live"].add(recording.uri, reference, live_turns(result), duration_s, uem)
            boards[threshold]["report"].add(recording.uri, reference, report_turns(result), duration_s, uem)
    off_summary = {kind: board.summary() for kind, board in off.items()}
    rows = []
    for threshold in thresholds:
        live, report = (boards[threshold][kind].summary() for kind in ("live", "report"))
        rows.append(
            {
                "profile": profile.name,
                "latency": profile.latency_s,
                "threshold": threshold,
                "skip_first_s": skip_first_s,
                "recordings": len(recordings),
                "enrolled": len(names),
                "live": live,
                "report": report,
                "der_off": {"live": off_summary["live"]["der"], "report": off_summary["report"]["der"]},
                # Identification if each label (speaker ids, no names) were named after the reader it covers best.
                "ceiling": {"live": off_summary["live"]["ceiling"], "report": off_summary["report"]["ceiling"]},
            }
        )
    return rows


def _percent(value: float | None, width: int) -> str:
    return f"{100 * value:{width - 1}.1f}%" if value is not None else f"{'-':>{width}}"


def format_identification(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        f"profile {first['profile']}, latency {first['latency']:g} s, {first['recordings']} recordings, "
        f"{first['enrolled']} enrolled; live scored after each reader's first {first['skip_first_s']:g} s",
        f"{'threshold':>9} {'live id':>8} {'wrong':>7} {'FA':>7} {'ceiling':>8} {'report id':>10} {'wrong':>7} "
        f"{'FA':>7} {'ceiling':>8} {'DER live on/off':>16} {'DER report on/off':>18}",
    ]
    for row in rows:
        live, report, off, ceiling = row["live"], row["report"], row["der_off"], row["ceiling"]
        lines.append(
            f"{row['threshold']:>9.2f} {_percent(live['identification'], 8)} {_percent(live['wrong_name'], 7)} "
            f"{_percent(live['false_accept'], 7)} {_percent(ceiling['live'], 8)} {_percent(report['identification'], 10)} "
            f"{_percent(report['wrong_name'], 7)} {_percent(report['false_accept'], 7)} {_percent(ceiling['report'], 8)} "
            f"{100 * live['der']:7.2f}/{100 * off['live']:6.2f}% {100 * report['der']:8.2f}/{100 * off['report']:6.2f}%"
        )
    lines.append(
        "id: enrolled readers' speech under their own name; wrong: under another enrolled name; FA: unknown readers' "
        "speech under an enrolled name; ceiling: id if every speaker were named after the reader it covers best"
    )
    if len(rows) == 1 and rows[0]["live"]["readers"]:
        for kind in ("live", "report"):
            readers = " ".join(f"{r}:{100 * v:.0f}%" for r, v in rows[0][kind]["readers"].items())
            lines.append(f"{kind} per reader: {readers}")
    return "\n".join(lines)
