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
from collections.abc import Callable
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


COUNT_MODES = ("none", "oracle")


def parse_count(text: str) -> str:
    """A `--num-speakers` value: none (estimated), oracle (each reference's own count) or a number."""
    if text in COUNT_MODES or (text.isdigit() and int(text) >= 1):
        return text
    raise EvaluationError(f"--num-speakers takes none, oracle or a positive number, not {text!r}")


@dataclass(frozen=True)
class Condition:
    """One way of scoring: which labels (live or the report), at which latency, with which speaker count."""

    labels: str  # "live" | "report"
    latency_s: float  # the live labels' latency (the report is settled at full context whatever it is)
    count: str  # COUNT_MODES or a number

    @property
    def name(self) -> str:
        latency = "" if self.labels == "report" else f"@{self.latency_s:g}s"
        return f"{self.labels}{latency} count={self.count}"

    def num_speakers(self, reference: list[RttmTurn]) -> int | None:
        if self.count == "none":
            return None
        if self.count == "oracle":
            return len({turn.speaker for turn in reference})
        return int(self.count)


class Scoreboard:
    """DER (collared and collar-free) and JER of one condition, per file and pooled."""

    def __init__(self, condition: Condition, collar: float) -> None:
        from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

        self.condition = condition
        self.collar = collar
        self.der = DiarizationErrorRate(collar=collar, skip_overlap=False)
        self.exact = DiarizationErrorRate(collar=0.0, skip_overlap=False)  # the collar-free figure, always reported
        self.jer = JaccardErrorRate(collar=collar, skip_overlap=False)
        self.files: dict[str, dict] = {}
        self.compute_s = 0.0
        self.audio_s = 0.0

    def add(self, recording: Recording, duration_s: float, spans: list[LabeledSpan], rttm_out: Path | None = None):
        hypothesis = hypothesis_annotation(recording.uri, spans)
        if rttm_out is not None:
            write_rttm(rttm_out / f"{recording.uri}.rttm", recording.uri, annotation_turns(hypothesis))
        reference = annotation(recording.uri, read_rttm(recording.rttm))
        uem = read_uem(recording.uem, duration_s)
        components = self.der(reference, hypothesis, uem=uem, detailed=True)
        jer = self.jer(reference, hypothesis, uem=uem)
        exact = self.exact(reference, hypothesis, uem=uem)
        self.files[recording.uri] = _components(components, jer, exact) | {
            "speakers": len(reference.labels()),
            "speakers_found": len(hypothesis.labels()),
        }
        self.audio_s += duration_s

    def summary(self, profile: Profile) -> dict:
        pooled = _components(
            {k: self.der.accumulated_[k] for k in ("total", "missed detection", "false alarm", "confusion")},
            abs(self.jer),
            abs(self.exact),
        )
        return {
            "pooled": pooled,
            "files": self.files,
            "profile": profile.name,
            "latency": self.condition.latency_s,
            "collar": self.collar,
            "labels": self.condition.labels,
            "num_speakers": self.condition.count,
            "speakers_exact": sum(f["speakers_found"] == f["speakers"] for f in self.files.values()),
            "compute_per_audio_s": self.compute_s / max(self.audio_s, 1e-9),
        }


def conditions(
    profile: Profile, latencies: tuple[float, ...] = (), counts: tuple[str, ...] = ("none",), labels=("live",)
) -> list[Condition]:
    """Every combination asked for: the live labels at each latency, the report once, for each count."""
    latencies = latencies or (profile.latency_s,)
    for latency in latencies:
        with_latency(profile, latency)  # refuses a latency the profile cannot take
    rows = []
    for count in counts:
        rows += [Condition("live", latency, count) for latency in latencies] if "live" in labels else []
        rows += [Condition("report", profile.latency_s, count)] if "report" in labels else []
    return rows


def evaluate_conditions(
    root: Path,
    profile: Profile,
    rows: list[Condition],
    collar: float = 0.25,
    rttm_out: Path | None = None,
    progress: bool = True,
    exclude: tuple[str, ...] = (),
    on_result: Callable[[Recording, Condition, ChainResult], None] | None = None,
) -> list[dict]:
    """Score every labelled recording under `root` under each condition; one JSON-ready summary per condition.

    The segment and embed stages run once per recording (`InProcessChain.embedded_stream`); only
    the cluster stage, which holds the latency and the count, runs once per condition. `on_result`
    sees each recording's outputs under each condition (the updates, turns and report scored).
    """
    from tqdm import tqdm

    from pipeline.stages.chains import build_cluster

    recordings = find_recordings(root, exclude)
    chain = InProcessChain(profile)
    clusters = {latency: build_cluster(with_latency(profile, latency)) for latency in {r.latency_s for r in rows}}
    boards = [Scoreboard(row, collar) for row in rows]
    outs = {row: rttm_dir(rttm_out, row, len(rows)) for row in rows}
    bar = tqdm(recordings, desc=f"eval {profile.name}", unit="file", disable=not progress, file=sys.stderr)
    for recording in bar:
        pcm = load_pcm16(recording.audio)
        duration_s = len(pcm) / SAMPLE_RATE
        reference = read_rttm(recording.rttm)
        shared = ChainResult()
        stream = chain.embedded_stream(pcm, SessionStart(session_id=f"eval-{recording.uri}"), result=shared)
        shared_s = shared.cpu_s["segment"] + shared.cpu_s["embed"]
        for board in boards:
            row = board.condition
            start = SessionStart(session_id=f"eval-{recording.uri}", num_speakers=row.num_speakers(reference))
            result = chain.cluster_stream(stream, start, clusters[row.latency_s])
            board.compute_s += shared_s + result.cpu_s["cluster"]
            if on_result is not None:
                on_result(recording, row, result)
            board.add(
                recording, duration_s, report_spans(result) if row.labels == "report" else live_spans(result), outs[row]
            )
        bar.set_postfix(der=f"{100 * abs(boards[0].der):.1f}%")
    return [board.summary(profile) for board in boards]


def rttm_dir(root: Path | None, row: Condition, rows: int) -> Path | None:
    """Where a condition's hypothesis RTTMs go: `root` itself for one condition, a folder per condition under it for several."""
    if root is None:
        return None
    folder = root if rows == 1 else root / row.name.replace(" ", "_").replace("=", "-").replace("@", "-")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def evaluate(
    root: Path,
    profile: Profile,
    collar: float = 0.25,
    use_report: bool = False,
    rttm_out: Path | None = None,
    progress: bool = True,
    exclude: tuple[str, ...] = (),
    count: str = "none",
) -> dict:
    """Score every labelled recording under `root` one way (the profile's latency); returns the JSON-ready summary."""
    row = Condition("report" if use_report else "live", profile.latency_s, count)
    (summary,) = evaluate_conditions(root, profile, [row], collar, rttm_out, progress, exclude)
    return summary


def format_summary(summary: dict) -> str:
    """One condition, file by file."""
    header = f"{'file':<12} {'DER':>7} {'JER':>7} {'missed':>7} {'FA':>7} {'conf':>7} {'DER@0':>7}  speakers"
    lines = [
        f"profile {summary['profile']}, {summary['labels']} labels, latency {summary['latency']:g} s, "
        f"speaker count {summary['num_speakers']}, collar {summary['collar']:g} s",
        header,
    ]
    for uri, r in summary["files"].items():
        lines.append(_row(uri, r, f"{r['speakers_found']}/{r['speakers']}"))
    lines.append(_row("pooled", summary["pooled"]))
    lines.append("DER@0: the same labels scored with no collar")
    if "served" in summary:
        lines.append(served_line(summary["served"]))
    else:
        lines.append(f"compute: {summary['compute_per_audio_s']:.3f} s per second of audio (CPU time, this process)")
    return "\n".join(lines)


def format_table(summaries: list[dict]) -> str:
    """Several conditions, pooled: one row each."""
    first = summaries[0]
    lines = [
        f"profile {first['profile']}, {len(first['files'])} recordings pooled, collar {first['collar']:g} s",
        f"{'labels':<22} {'DER':>7} {'JER':>7} {'missed':>7} {'FA':>7} {'conf':>7} {'DER@0':>7}  speakers exact",
    ]
    for summary in summaries:
        name = Condition(summary["labels"], summary["latency"], summary["num_speakers"]).name
        exact = f"{summary['speakers_exact']}/{len(summary['files'])}"
        lines.append(_row(name, summary["pooled"], exact, width=22))
    if "served" in first:
        lines.append(served_line(first["served"]))
    return "\n".join(lines)


def served_line(served: dict) -> str:
    """How labels scored through a stack were served (`pipeline.evaluation.served`)."""
    pace = "as fast as possible" if served["speed"] == 0 else f"at {served['speed']:g}x real time"
    return (
        f"served by {served['url']}: {served['concurrency']} sessions at once, {pace}, "
        f"{served['wall_s']:.0f} s wall time"
    )


def _row(name: str, r: dict, speakers: str = "", width: int = 12) -> str:
    cells = [100 * r[k] for k in ("der", "jer", "missed", "false_alarm", "confusion", "der_no_collar")]
    return f"{name:<{width}} " + " ".join(f"{c:6.2f}%" for c in cells) + f"  {speakers}"
