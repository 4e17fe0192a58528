"""Diarization error of the streaming stages on a folder of labelled recordings.

Every recording runs through the same stage classes the workers use, in one
process and as fast as the CPU allows (`InProcessChain`). The live labels are
what the speaker updates settled, span by span, at the profile's latency; the
report labels are the final re-clustered report. Both are scored with
pyannote.metrics: DER (missed speech, false alarm, confusion) and JER, with
overlapped speech scored and the collar as given, per file and pooled.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Profile
from pipeline.evaluation.chain import ChainResult, InProcessChain
from pipeline.producers.audio_file import load_pcm16
from pipeline.rttm import RttmTurn, read_rttm, span_turns, write_rttm
from topics.messages import SAMPLE_RATE, LabeledSpan, SessionStart

AUDIO_SUFFIXES = (".wav", ".flac")


class EvaluationError(ValueError):
    pass


@dataclass(frozen=True)
class Recording:
    uri: str
    audio: Path
    rttm: Path
    uem: Path | None


def find_recordings(root: Path, exclude: tuple[str, ...] = ()) -> list[Recording]:
    """Audio files under `root` that have an RTTM of the same stem somewhere under `root`, but for `exclude`."""
    if not root.is_dir():
        raise EvaluationError(f"{root} is not a directory")
    by_stem: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*")):
        suffix = path.suffix.lower()
        if path.is_file() and suffix in (*AUDIO_SUFFIXES, ".rttm", ".uem"):
            kind = "audio" if suffix in AUDIO_SUFFIXES else suffix[1:]
            by_stem.setdefault(path.stem, {}).setdefault(kind, path)
    recordings = [
        Recording(uri=stem, audio=files["audio"], rttm=files["rttm"], uem=files.get("uem"))
        for stem, files in sorted(by_stem.items())
        if "audio" in files and "rttm" in files and stem not in exclude
    ]
    if not recordings:
        raise EvaluationError(f"no recording under {root} has an RTTM of the same name")
    return recordings


def with_latency(profile: Profile, latency_s: float | None) -> Profile:
    if latency_s is None:
        return profile
    try:
        return profile.with_latency(latency_s)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None


def live_spans(result: ChainResult) -> list[LabeledSpan]:
    return [span for update in result.updates for span in update.spans]


def report_spans(result: ChainResult) -> list[LabeledSpan]:
    return list(result.report.turns) if result.report is not None else []


def annotation(uri: str, turns: list[RttmTurn]):
    """pyannote's view of the turns, for its metrics."""
    from pyannote.core import Annotation, Segment

    result = Annotation(uri=uri)
    for i, turn in enumerate(turns):
        result[Segment(turn.start_s, turn.end_s), i] = turn.speaker
    return result


def hypothesis_annotation(uri: str, spans: list[LabeledSpan]):
    """The labels to score: empty spans dropped, adjacent pieces of one speaker joined into one segment."""
    return annotation(uri, span_turns(s for s in spans if s.end_ms > s.start_ms)).support()


def annotation_turns(annotated) -> list[RttmTurn]:
    return [RttmTurn(label, segment.start, segment.end) for segment, _, label in annotated.itertracks(yield_label=True)]


def read_uem(path: Path | None, duration_s: float):
    from pyannote.core import Segment, Timeline

    if path is None:
        return Timeline([Segment(0.0, duration_s)])
    return Timeline(
        [
            Segment(float(f[2]), float(f[3]))
            for f in (line.split() for line in path.read_text().splitlines())
            if len(f) >= 4
        ]
    )


def _components(der_components: dict, jer: float, der_no_collar: float) -> dict[str, float]:
    total = der_components["total"] or 1.0
    missed, false_alarm, confusion = (der_components[k] for k in ("missed detection", "false alarm", "confusion"))
    return {
        "der": (missed + false_alarm + confusion) / total,
        "der_no_collar": der_no_collar,
        "jer": jer,
        "missed": missed / total,
        "false_alarm": false_alarm / total,
        "confusion": confusion / total,
        "speech_s": der_components["total"],
    }


def evaluate(
    root: Path,
    profile: Profile,
    collar: float = 0.25,
    use_report: bool = False,
    rttm_out: Path | None = None,
    progress: bool = True,
    exclude: tuple[str, ...] = (),
) -> dict:
    """Score every labelled recording under `root`; returns the JSON-ready summary."""
    from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate
    from tqdm import tqdm

    recordings = find_recordings(root, exclude)
    chain = InProcessChain(profile)
    der_metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    exact_metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)  # the collar-free figure, always reported
    jer_metric = JaccardErrorRate(collar=collar, skip_overlap=False)
    if rttm_out is not None:
        rttm_out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    audio_s = compute_s = 0.0
    bar = tqdm(recordings, desc=f"eval {profile.name}", unit="file", disable=not progress, file=sys.stderr)
    for recording in bar:
        pcm = load_pcm16(recording.audio)
        began = time.process_time()
        result = chain.run(pcm, SessionStart(session_id=f"eval-{recording.uri}"))
        compute_s += time.process_time() - began
        duration_s = len(pcm) / SAMPLE_RATE
        audio_s += duration_s
        hypothesis = hypothesis_annotation(recording.uri, report_spans(result) if use_report else live_spans(result))
        if rttm_out is not None:
            write_rttm(rttm_out / f"{recording.uri}.rttm", recording.uri, annotation_turns(hypothesis))
        reference = annotation(recording.uri, read_rttm(recording.rttm))
        uem = read_uem(recording.uem, duration_s)
        components = der_metric(reference, hypothesis, uem=uem, detailed=True)
        jer = jer_metric(reference, hypothesis, uem=uem)
        exact = exact_metric(reference, hypothesis, uem=uem)
        files[recording.uri] = _components(components, jer, exact) | {
            "speakers": len(reference.labels()),
            "speakers_found": len(hypothesis.labels()),
        }
        bar.set_postfix(der=f"{100 * abs(der_metric):.1f}%")
    pooled = _components(
        {k: der_metric.accumulated_[k] for k in ("total", "missed detection", "false alarm", "confusion")},
        abs(jer_metric),
        abs(exact_metric),
    )
    return {
        "pooled": pooled,
        "files": files,
        "profile": profile.name,
        "latency": profile.latency_s,
        "collar": collar,
        "labels": "report" if use_report else "live",
        "compute_per_audio_s": compute_s / max(audio_s, 1e-9),
    }


def format_summary(summary: dict) -> str:
    header = f"{'file':<12} {'DER':>7} {'JER':>7} {'missed':>7} {'FA':>7} {'conf':>7} {'DER@0':>7}  speakers"
    lines = [
        f"profile {summary['profile']}, {summary['labels']} labels, latency {summary['latency']:g} s, collar {summary['collar']:g} s",
        header,
    ]

    def row(name: str, r: dict, speakers: str = "") -> str:
        cells = [100 * r[k] for k in ("der", "jer", "missed", "false_alarm", "confusion", "der_no_collar")]
        return f"{name:<12} " + " ".join(f"{c:6.2f}%" for c in cells) + f"  {speakers}"

    for uri, r in summary["files"].items():
        lines.append(row(uri, r, f"{r['speakers_found']}/{r['speakers']}"))
    lines.append(row("pooled", summary["pooled"]))
    lines.append("DER@0: the same labels scored with no collar")
    lines.append(f"compute: {summary['compute_per_audio_s']:.3f} s per second of audio (CPU time, this process)")
    return "\n".join(lines)
