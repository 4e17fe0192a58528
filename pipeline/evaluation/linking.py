"""Speaker linking across recordings: is every reader who recurs one voice, and no voice two readers?

Every labelled recording under the folders runs through the profile's stages in one process
(`InProcessChain`) as one session; the step `pipeline.stages.speaker_linking` then links the
reports' speakers. The reference labels must be global (one label per reader in every RTTM, as in
the dev set and the enrolment set). Each report speaker stands for the reader it covers most; a
recurring reader (the main speaker of two sessions or more) is linked when its main speakers in
all of them share one label; a voice is merged when its speakers stand for different readers.

    python -m pipeline.evaluation.linking ../shared/data/devset ../shared/data/enrollment [--profile P] [--distance D,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from pipeline.config import PROFILES, Profile, load_profile
from pipeline.evaluation.chain import InProcessChain
from pipeline.evaluation.der import find_recordings
from pipeline.producers.audio_file import load_pcm16
from pipeline.rttm import RttmTurn, read_rttm
from pipeline.stages.speaker_linking import LinkedVoice, SpeakerLinker, job_labels
from topics.messages import ReportedSpeaker, ReportedTurn, SessionReport, SessionStart


def reader_of_speakers(report: SessionReport, reference: list[RttmTurn]) -> dict[int, str | None]:
    """Each report speaker's reader: the reference label it shares most speech with."""
    readers: dict[int, str | None] = {}
    for speaker in report.speakers:
        shared: dict[str, float] = {}
        for turn in (t for t in report.turns if t.speaker == speaker.id):
            for ref in reference:
                overlap = min(turn.end_ms / 1000, ref.end_s) - max(turn.start_ms / 1000, ref.start_s)
                if overlap > 0:
                    shared[ref.speaker] = shared.get(ref.speaker, 0.0) + overlap
        readers[speaker.id] = max(shared, key=shared.get) if shared else None
    return readers


def score_links(reports: list[SessionReport], references: dict[str, list[RttmTurn]], voices: list[LinkedVoice]) -> dict:
    readers = {
        (r.session_id, s): reader
        for r in reports
        for s, reader in reader_of_speakers(r, references[r.session_id]).items()
    }
    talk = {(r.session_id, s.id): s.total_time_ms for r in reports for s in r.speakers}
    labels = job_labels(voices)
    main: dict[str, dict[str, tuple[int, int]]] = {}  # reader -> session -> (speaker, talk)
    for (session, speaker), reader in readers.items():
        if reader is not None and talk[(session, speaker)] > main.get(reader, {}).get(session, (0, -1))[1]:
            main.setdefault(reader, {})[session] = (speaker, talk[(session, speaker)])
    recurring = sorted(reader for reader, sessions in main.items() if len(sessions) > 1)
    linked = [
        reader
        for reader in recurring
        if len({labels[(session, speaker)] for session, (speaker, _) in main[reader].items()}) == 1
    ]
    merged = [
        sorted({readers[m] for m in voice.members} - {None})
        for voice in voices
        if len({readers[m] for m in voice.members} - {None}) > 1
    ]
    return {
        "sessions": len(reports),
        "speakers": len(readers),
        "readers": len(main),
        "voices": len(voices),
        "recurring": recurring,
        "linked": linked,
        "merged": merged,
    }


def session_reports(folders: list[Path], profile: Profile) -> tuple[list[SessionReport], dict[str, list[RttmTurn]]]:
    chain = InProcessChain(profile)
    reports, references = [], {}
    for folder in folders:
        for recording in find_recordings(folder):
            result = chain.run(load_pcm16(recording.audio), SessionStart(session_id=recording.uri))
            assert result.report is not None
            reports.append(result.report)
            references[recording.uri] = read_rttm(recording.rttm)
    return reports, references


def served_reports(
    folders: list[Path], url: str, enroll: Path | None = None
) -> tuple[list[SessionReport], dict[str, list[RttmTurn]], dict[str, str]]:
    """The recordings as one batch job of a running stack (`POST /v1/jobs`); each clip's report as the results give
    it, with its speakers' job-wide labels. With `enroll`, each of its clips is enrolled first under its stem."""
    import time

    from pipeline.producers.gateway_http import JobsClient, SpeakersClient

    recordings = [r for folder in folders for r in find_recordings(folder)]
    enrolled = []
    if enroll is not None:
        speakers = SpeakersClient(url)
        enrolled = [speakers.enroll(clip.stem, [clip])["id"] for clip in sorted(enroll.glob("*.flac"))]
    jobs = JobsClient(url, timeout_s=600)
    try:
        job = jobs.submit([r.audio for r in recordings])
        while job["status"] == "running":
            time.sleep(2.0)
            job = jobs.status(job["id"])
        if job["status"] != "done":
            raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
        results = jobs.results(job["id"])
    finally:
        for profile_id in enrolled:
            SpeakersClient(url).delete(profile_id)
    reports, references, labels = [], {}, {}
    for recording, clip in zip(recordings, results["clips"]):
        reports.append(
            SessionReport(
                session_id=recording.uri,
                duration_ms=clip["durationMs"],
                speakers=[ReportedSpeaker(id=s["id"], total_time_ms=s["totalTimeMs"]) for s in clip["speakers"]],
                turns=[
                    ReportedTurn(speaker=t["speakerId"], start_ms=t["startMs"], end_ms=t["endMs"])
                    for t in clip["turns"]
                ],
            )
        )
        references[recording.uri] = read_rttm(recording.rttm)
        labels |= {f"{recording.uri}:{s['id']}": s["label"] for s in clip["speakers"]}
    return reports, references, labels


def score_labels(reports: list[SessionReport], references: dict[str, list[RttmTurn]], labels: dict[str, str]) -> dict:
    """`score_links` for labels given (session:speaker -> label), as a served job's results give them."""
    voices: dict[str, list[tuple[str, int]]] = {}
    for member, label in labels.items():
        session, _, speaker = member.rpartition(":")
        voices.setdefault(label, []).append((session, int(speaker)))

    linked = [LinkedVoice(label=label, profile_id=None, members=tuple(m)) for label, m in voices.items()]
    return score_links(reports, references, linked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--profile", choices=PROFILES, default="accurate")
    parser.add_argument("--distance", help="link distances to score, comma-separated (default: the profile's)")
    parser.add_argument(
        "--through",
        metavar="URL",
        help="run them as one batch job of a running stack instead, e.g. http://127.0.0.1:8000",
    )
    parser.add_argument("--enroll", type=Path, help="with --through: enrol every clip of this folder first")
    args = parser.parse_args()
    if args.through:
        reports, references, labels = served_reports(args.folders, args.through, args.enroll)
        score = score_labels(reports, references, labels)
        print(
            f"batch job of {score['sessions']} clips through {args.through}: {score['speakers']} speakers of "
            f"{score['readers']} readers in {score['voices']} labels; recurring readers linked "
            f"{len(score['linked'])}/{len(score['recurring'])} ({', '.join(score['recurring'])}); labels merging two "
            f"readers or more: {len(score['merged'])}"
            + "".join(f"\n    merged: {' + '.join(m)}" for m in score["merged"])
        )
        named = sorted({label for label in labels.values() if not label.startswith("speaker ")})
        print(f"enrolled names among the labels: {len(named)} ({', '.join(named)})")
        return
    profile = load_profile(args.profile)
    reports, references = session_reports(args.folders, profile)
    distances = [float(d) for d in args.distance.split(",")] if args.distance else [profile.linking.link_distance]
    print(f"profile {profile.name}: {len(reports)} sessions of {', '.join(str(f) for f in args.folders)}")
    for distance in distances:
        linker = SpeakerLinker(dataclasses.replace(profile.linking, link_distance=distance))
        score = score_links(reports, references, linker.link(reports))
        print(
            f"link distance {distance:g}: {score['speakers']} speakers of {score['readers']} readers in "
            f"{score['voices']} voices; recurring readers linked {len(score['linked'])}/{len(score['recurring'])} "
            f"({', '.join(score['recurring'])}); voices merging two readers or more: {len(score['merged'])}"
            + "".join(f"\n    merged: {' + '.join(m)}" for m in score["merged"])
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
