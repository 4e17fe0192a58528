"""The `speakerflow` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import PROFILES, Profile
from pipeline.export import FORMATS
from pipeline.settings import Settings
from pipeline.stages.base import STAGES
from topics import SessionReport

if TYPE_CHECKING:
    from pipeline.evaluation.der import Condition


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.agents.worker import run_worker

    run_worker(args.stage, settings, loglevel=args.loglevel)
    return 0


def _gateway(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.gateway.app import serve

    serve(settings)
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.bus import ensure_topics

    created = asyncio.run(ensure_topics(settings.kafka, security=settings.kafka_security))
    print(f"created: {', '.join(created)}" if created else "all topics exist")
    return 0


def _kafka_jars(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.devstack.broker.runtime import KAFKA_VERSION, assemble

    print(f"Kafka {KAFKA_VERSION} jars in {assemble(settings.cache_dir)}")
    return 0


def _load(path: Path):
    from pipeline.producers.audio_file import AudioFileError, load_pcm16

    try:
        return load_pcm16(path)
    except AudioFileError as exc:
        raise SystemExit(f"speakerflow: {exc}") from None


def _print_report(report: SessionReport, reference: Path | None) -> None:
    for speaker in report.speakers:
        print(f"speaker {speaker.id}: {speaker.total_time_ms / 1000:.1f} s")
    if reference is not None:
        from pipeline.evaluation.talktime import compare, format_table
        from pipeline.rttm import read_rttm

        print()
        print(format_table(compare(read_rttm(reference), report)))


def _speaker_counts(args: argparse.Namespace) -> dict[str, int]:
    """The --num-speakers, --min-speakers and --max-speakers given, checked as the gateway checks a start."""
    from pipeline.gateway.protocol import ProtocolError, speaker_counts

    try:
        return speaker_counts(args.num_speakers, args.min_speakers, args.max_speakers)
    except ProtocolError as exc:
        raise SystemExit(f"speakerflow {args.command}: {exc.message}") from None


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.producers.replay import replay

    counts = _speaker_counts(args)
    pcm = _load(args.file)
    report = asyncio.run(
        replay(
            pcm,
            settings.kafka,
            session_id=args.session,
            realtime=args.realtime,
            wait_report_s=None if args.no_wait else settings.report_timeout_s,
            progress=sys.stderr.isatty(),
            security=settings.kafka_security,
            **counts,
        )
    )
    if report is not None:
        if args.json:
            print(report.model_dump_json(indent=2))
        else:
            _print_report(report, args.reference)
    return 0


def _livekit(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    from prometheus_client import start_http_server

    from pipeline.metrics import LIVEKIT_METRICS_PORT
    from pipeline.producers.livekit import LiveKitIngest

    counts = _speaker_counts(args)
    ingest = LiveKitIngest(
        args.url,
        settings.kafka,
        api_key=args.api_key,
        api_secret=args.api_secret,
        room=args.room,
        counts=counts,
        publish_results=args.publish_results,
        report_timeout_s=settings.report_timeout_s,
        security=settings.kafka_security,
    )
    # The same port setting as a stage worker's (0: off), with the ingest's own fixed default.
    port = LIVEKIT_METRICS_PORT if settings.metrics_port is None else settings.metrics_port
    if port:
        start_http_server(port)

    async def run_until_signalled() -> None:
        # SIGTERM (a pod or container stopping) and Ctrl-C leave the rooms, so every session gets its stop.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, ingest.stop)
        await ingest.run()

    asyncio.run(run_until_signalled())
    return 0


def _stream(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.gateway.audio_input import Encoding
    from pipeline.gateway.protocol import ProtocolError, audio_format, session_url
    from pipeline.producers.audio_file import AudioFileError, float_to_pcm16, load_mono
    from pipeline.producers.gateway_client import LiveView, report_from_event, stream_session

    counts = _speaker_counts(args)
    try:
        client_format = audio_format(args.sample_rate, args.encoding)
    except ProtocolError as exc:
        raise SystemExit(f"speakerflow stream: {exc.message}") from None
    try:
        samples = load_mono(args.file, client_format.sample_rate)
    except AudioFileError as exc:
        raise SystemExit(f"speakerflow: {exc}") from None
    pcm = float_to_pcm16(samples) if client_format.encoding is Encoding.PCM_S16LE else samples
    url = args.url or session_url(settings.gateway_host, settings.gateway_port)
    event = asyncio.run(
        stream_session(
            url,
            pcm,
            realtime=not args.fast,
            on_event=None if args.quiet else LiveView(),
            sample_rate=client_format.sample_rate,
            encoding=client_format.encoding,
            api_key=settings.api_key,
            **counts,
        )
    )
    print()
    if args.json:
        print(json.dumps(event, indent=2))
    else:
        _print_report(report_from_event("stream", event), args.reference)
    return 0


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.devstack.stack import Stack

    run_dir = settings.run_dir
    stack = Stack(run_dir.resolve(), settings, broker_port=args.kafka_port, fixed_metrics_ports=True).start(detach=True)
    print(f"speakerflow is up: Kafka {stack.settings.kafka}, gateway {stack.gateway_url} (logs in {run_dir / 'logs'})")
    print(f"web console: {stack.gateway_url}/")
    print("metrics: " + ", ".join(f"{name} {stack.metrics_url(name)}" for name in [*stack.metrics_ports, "gateway"]))
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.devstack.stack import stop_detached_stack

    print("stopped" if stop_detached_stack(settings.run_dir.resolve()) else "nothing was running")
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.devstack.demo import run_demo

    return run_demo(speakers=args.speakers, settings=settings)


def _benchmark(args: argparse.Namespace, settings: Settings) -> int:
    if args.stages:
        from pipeline.config import load_profile
        from pipeline.evaluation.stage_benchmark import run_stage_benchmark

        print(run_stage_benchmark(_load(args.file), load_profile(args.profile or settings.profile), args.sessions))
        return 0
    from pipeline.devstack.stack_benchmark import run_benchmark

    counts = _speaker_counts(args)
    print(run_benchmark(_load(args.file), args.sessions, settings, counts))
    return 0


def _scale_out(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.devstack.scaleout import run_scale_out

    print(run_scale_out(args.sessions, args.workers, args.embed_workers, args.kill, settings))
    return 0


def _capacity(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from pipeline.devstack import capacity

    try:
        sessions = capacity.parse_sessions(args.sessions)
        workers = capacity.parse_workers(args.workers)
    except ValueError as exc:
        raise SystemExit(f"speakerflow capacity: {exc}") from None
    if args.seconds <= 0:
        raise SystemExit("speakerflow capacity: --seconds takes a positive number")
    try:
        clips = capacity.file_clips(args.files, args.seconds) if args.files else capacity.default_clips(args.seconds)
    except ValueError as exc:  # an unreadable file, a dev set without labelled recordings
        raise SystemExit(f"speakerflow capacity: {exc}") from None
    run = capacity.run_capacity(
        clips,
        replace(settings, profile=args.profile or settings.profile),
        sessions,
        workers,
        args.keep_going,
        args.warmup,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(run.to_json(), indent=2))
    return 0


def _soak(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from pipeline.devstack import capacity, soak

    if args.minutes <= 0 or args.sessions < 1 or args.seconds <= 0 or args.interval <= 0:
        raise SystemExit("speakerflow soak: --minutes, --sessions, --seconds and --interval take positive numbers")
    try:
        clips = capacity.file_clips(args.files, args.seconds) if args.files else capacity.default_clips(args.seconds)
    except ValueError as exc:  # an unreadable file, a dev set without labelled recordings
        raise SystemExit(f"speakerflow soak: {exc}") from None
    run = soak.run_soak(
        clips, replace(settings, profile=args.profile or settings.profile), args.minutes, args.sessions, args.interval
    )
    print(soak.format_table(run))
    print(soak.format_summary(run))
    if args.json is not None:
        args.json.write_text(json.dumps(run.to_json(), indent=2))
    return 1 if run.problems() else 0


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.config import load_profile
    from pipeline.evaluation.der import (
        EvaluationError,
        conditions,
        evaluate_conditions,
        format_summary,
        format_table,
        parse_count,
    )

    if args.enroll is not None:
        return _eval_identification(args)
    through = args.through is not None
    if not through and (args.speed is not None or args.concurrency is not None):
        raise SystemExit("speakerflow eval: --speed and --concurrency pace sessions streamed --through a stack")
    try:
        # Through a stack, the profile is the stack's: by default the one SPEAKERFLOW_PROFILE names, as `up` reads it.
        profile = load_profile(args.profile or (settings.profile if through else "accurate"))
        rows = conditions(
            profile,
            latencies=tuple(float(x) for x in _listed(args.latency)),
            counts=tuple(parse_count(x) for x in _listed(args.num_speakers or "none")),
            labels=("report",) if args.report else tuple(_listed(args.labels)),
        )
        if not rows:
            raise EvaluationError("--labels takes live, report or both (live,report)")
        if through:
            summaries = _eval_through(args, settings, profile, rows)
        else:
            summaries = evaluate_conditions(
                args.dir, profile, rows, collar=args.collar, rttm_out=args.rttm_out, exclude=tuple(args.exclude)
            )
    except (EvaluationError, ValueError) as exc:
        raise SystemExit(f"speakerflow eval: {exc}") from None
    print(format_summary(summaries[0]) if len(summaries) == 1 else format_table(summaries))
    if args.json is not None:
        args.json.write_text(json.dumps(summaries[0] if len(summaries) == 1 else {"conditions": summaries}, indent=2))
    return 0


def _eval_identification(args: argparse.Namespace) -> int:
    """`eval --enroll`: known-speaker identification, false accept and DER with names on and off."""
    from pipeline.config import load_profile
    from pipeline.evaluation.der import EvaluationError, with_latency
    from pipeline.evaluation.identification import evaluate_identification, format_identification

    if args.through is not None:
        raise SystemExit("speakerflow eval: --enroll scores in process; it does not take --through")
    try:
        latencies = _listed(args.latency)
        if len(latencies) > 1:
            raise EvaluationError("--enroll scores one latency at a time")
        profile = load_profile(args.profile or "accurate")
        profile = with_latency(profile, float(latencies[0]) if latencies else None)
        rows = evaluate_identification(
            args.dir,
            args.enroll,
            profile,
            thresholds=tuple(float(x) for x in _listed(args.identify_threshold)),
            collar=args.collar,
            exclude=tuple(args.exclude),
        )
    except (EvaluationError, ValueError) as exc:
        raise SystemExit(f"speakerflow eval: {exc}") from None
    print(format_identification(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows[0] if len(rows) == 1 else {"thresholds": rows}, indent=2))
    return 0


def _eval_through(args: argparse.Namespace, settings: Settings, profile: Profile, rows: list[Condition]) -> list[dict]:
    """`eval --through`: the recordings streamed through a running stack's gateway, its labels scored."""
    from aiokafka.errors import KafkaConnectionError

    from pipeline.evaluation.served import evaluate_served
    from pipeline.gateway.protocol import session_url
    from pipeline.producers.gateway_client import GatewaySessionError

    url = args.through or session_url(settings.gateway_host, settings.gateway_port)
    try:
        return evaluate_served(
            args.dir,
            profile,
            rows,
            url,
            settings.kafka,
            speed=1.0 if args.speed is None else args.speed,
            concurrency=4 if args.concurrency is None else args.concurrency,
            collar=args.collar,
            rttm_out=args.rttm_out,
            exclude=tuple(args.exclude),
            security=settings.kafka_security,
        )
    except KafkaConnectionError:
        raise SystemExit(f"speakerflow eval: cannot reach Kafka at {settings.kafka} (SPEAKERFLOW_KAFKA)") from None
    except GatewaySessionError as exc:
        raise SystemExit(f"speakerflow eval: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"speakerflow eval: cannot reach the gateway at {url}: {exc}") from None


def _listed(text: str | None) -> list[str]:
    """A comma-separated option's values."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _speakers(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.producers.gateway_http import GatewayApiError, SpeakersClient, base_url

    client = SpeakersClient(
        args.url or base_url(settings.gateway_host, settings.gateway_port), api_key=settings.api_key
    )
    try:
        if args.action == "enroll":
            missing = [str(f) for f in args.files if not f.is_file()]
            if missing:
                raise SystemExit(f"speakerflow speakers: no such file: {', '.join(missing)}")
            speaker = client.enroll(args.name, args.files)
            print(f"enrolled {speaker['name']} as {speaker['id']} ({speaker['speechS']:.1f} s of speech)")
        elif args.action == "add":
            speaker = client.add_clips(args.id, args.files)
            print(f"{speaker['name']} ({speaker['id']}): {speaker['clips']} clips, {speaker['speechS']:.1f} s speech")
        elif args.action == "list":
            speakers = client.list()
            if args.json:
                print(json.dumps(speakers, indent=2))
            for speaker in [] if args.json else speakers:
                print(f"{speaker['id']}  {speaker['name']:<24} {speaker['clips']} clip(s) {speaker['speechS']:6.1f} s")
            if not speakers and not args.json:
                print("no speakers enrolled")
        else:
            client.delete(args.id)
            print(f"deleted {args.id}")
    except GatewayApiError as exc:
        raise SystemExit(f"speakerflow speakers: {exc}") from None
    return 0


def _job(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from pipeline.producers.gateway_http import GatewayApiError, JobsClient, base_url

    client = JobsClient(args.url or base_url(settings.gateway_host, settings.gateway_port), api_key=settings.api_key)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise SystemExit(f"speakerflow job: no such file: {', '.join(missing)}")
    try:
        job = client.submit(args.files)
        print(f"job {job['id']}: {len(job['clips'])} clips", file=sys.stderr)
        if not (args.wait or args.export):
            print(job["id"])
            return 0
        shown = -1
        while job["status"] == "running":
            time.sleep(1.0)
            job = client.status(job["id"])
            percent = int(100 * job["progress"])
            if percent != shown:
                print(f"  {percent:3d} %", file=sys.stderr)
                shown = percent
        if job["status"] != "done":
            raise SystemExit(f"speakerflow job: job {job['id']} {job['status']}: {job.get('error')}")
        sys.stdout.write(client.export(job["id"], args.export or "text"))
    except GatewayApiError as exc:
        raise SystemExit(f"speakerflow job: {exc}") from None
    return 0


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.gateway.api_keys import keys_command

    return keys_command(args.action, settings, **{k: v for k, v in vars(args).items() if k not in ("run", "action")})


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from aiokafka.errors import KafkaConnectionError

    from pipeline.export import ReportNotFound, fetch_report, format_report

    try:
        report = asyncio.run(fetch_report(settings.kafka, args.session, settings.kafka_security))
    except ReportNotFound as exc:
        raise SystemExit(f"speakerflow export: {exc}") from None
    except KafkaConnectionError:
        raise SystemExit(f"speakerflow export: cannot reach Kafka at {settings.kafka} (SPEAKERFLOW_KAFKA)") from None
    text = format_report(report, args.format)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


def _add_speaker_counts(command: argparse.ArgumentParser, whose: str = "the session") -> None:
    """--num-speakers, or bounds on the estimate: the start action's counts (pipeline.gateway.protocol)."""
    command.add_argument(
        "--num-speakers", type=int, metavar="N", help=f"speakers {whose} has, if known (default: estimated)"
    )
    command.add_argument(
        "--min-speakers", type=int, metavar="N", help="with the count estimated, at least this many (default 1)"
    )
    command.add_argument(
        "--max-speakers", type=int, metavar="N", help="with the count estimated, at most this many (default 20)"
    )


def _described_parser(commands, name: str, help: str, *paragraphs: str) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with these paragraphs, each wrapped to 100 columns."""
    return commands.add_parser(
        name,
        help=help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(textwrap.fill(paragraph, 100) for paragraph in paragraphs),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerflow",
        description="Real-time speaker diarization on Kafka. Settings come from SPEAKERFLOW_* environment "
        "variables (SPEAKERFLOW_KAFKA, SPEAKERFLOW_GATEWAY_HOST/PORT, SPEAKERFLOW_PROFILE, ...); see the README.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run one stage's Faust worker (segment, embed or cluster)")
    worker.add_argument("stage", choices=STAGES)
    worker.add_argument("--loglevel", default="warning", choices=["debug", "info", "warning", "error"])
    worker.set_defaults(run=_worker)

    commands.add_parser("gateway", help="run the WebSocket gateway").set_defaults(run=_gateway)
    commands.add_parser("topics", help="create the bus topics declared in topics/").set_defaults(run=_topics)
    commands.add_parser(
        "kafka-jars", help="collect the Kafka broker's jars from Maven Central into the cache (done by `make setup`)"
    ).set_defaults(run=_kafka_jars)

    replay = commands.add_parser("replay", help="stream a WAV/FLAC onto the bus as one session and print its report")
    replay.add_argument("file", type=Path, help="any sample rate or channel count; resampled to 16 kHz mono")
    replay.add_argument("--session", help="session id (default: a new random id)")
    replay.add_argument("--realtime", action="store_true", help="pace the audio as if it were live")
    _add_speaker_counts(replay)
    replay.add_argument("--no-wait", action="store_true", help="do not wait for the session report")
    replay.add_argument("--reference", type=Path, help="RTTM to compare the reported talk time with")
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.set_defaults(run=_replay)

    stream = commands.add_parser("stream", help="stream a WAV/FLAC through the gateway's WebSocket as a live session")
    stream.add_argument("file", type=Path)
    stream.add_argument("--url", help="gateway session URL (default from SPEAKERFLOW_GATEWAY_HOST/PORT)")
    _add_speaker_counts(stream)
    stream.add_argument(
        "--sample-rate", type=int, help="send the audio at this rate, 8000-48000 (default 16000), as a client would"
    )
    stream.add_argument("--encoding", help="send the samples as pcm_s16le (the default) or pcm_f32le")
    stream.add_argument("--fast", action="store_true", help="send as fast as possible instead of in real time")
    stream.add_argument("--quiet", action="store_true", help="do not print live updates")
    stream.add_argument("--reference", type=Path, help="RTTM to compare the reported talk time with")
    stream.add_argument("--json", action="store_true", help="print the report event as JSON")
    stream.set_defaults(run=_stream)

    livekit = commands.add_parser("livekit", help="ingest every audio track of LiveKit rooms, one session per track")
    livekit.add_argument("--url", required=True, help="LiveKit server URL, e.g. ws://HOST:7880")
    livekit.add_argument("--api-key", help="LiveKit API key (default: LIVEKIT_API_KEY)")
    livekit.add_argument("--api-secret", help="LiveKit API secret (default: LIVEKIT_API_SECRET)")
    rooms = livekit.add_mutually_exclusive_group(required=True)
    rooms.add_argument("--room", help="ingest this room and exit once the ingest has left it")
    rooms.add_argument("--all-rooms", action="store_true", help="ingest every room no other ingest instance holds")
    _add_speaker_counts(livekit, "each track")
    livekit.add_argument(
        "--publish-results",
        action="store_true",
        help="send speaker updates back into the room on data topic speakerflow",
    )
    livekit.set_defaults(run=_livekit)

    up = commands.add_parser("up", help="start Kafka, the workers and the gateway in the background (state in .run/)")
    up.add_argument("--kafka-port", type=int, default=9092)
    up.set_defaults(run=_up)
    commands.add_parser("down", help="stop what `up` started").set_defaults(run=_down)

    bench = commands.add_parser(
        "benchmark", help="measure CPU per process for N real-time sessions streamed through a fresh stack"
    )
    bench.add_argument("file", type=Path)
    bench.add_argument(
        "--sessions",
        type=int,
        default=1,
        help="streams at once (with --stages: batched in one process, as workers batch)",
    )
    _add_speaker_counts(bench, whose="each session")
    bench.add_argument(
        "--stages",
        action="store_true",
        help="instead: compute per audio second of each stage per stream, on one core, with no broker",
    )
    bench.add_argument("--profile", choices=PROFILES, help="profile for --stages (default SPEAKERFLOW_PROFILE)")
    bench.set_defaults(run=_benchmark)

    scale = commands.add_parser(
        "scale-out",
        help="lag and latency with several workers per stateful stage, and failover when one is killed (fresh stack)",
    )
    scale.add_argument("--sessions", type=int, default=8, help="live sessions at once (synthesized, 13-20 s each)")
    scale.add_argument("--workers", type=int, default=2, help="workers of segment and of cluster")
    scale.add_argument("--embed-workers", type=int, default=1)
    scale.add_argument(
        "--kill", choices=["segment", "cluster"], help="then run again, SIGKILLing one worker of this stage"
    )
    scale.set_defaults(run=_scale_out)

    capacity = _described_parser(
        commands,
        "capacity",
        "how many real-time sessions a fresh stack holds: a ramp of live sessions through its gateway",
        "Start a fresh stack (broker, workers, gateway, in a temporary directory) and ramp concurrent "
        "real-time sessions through its gateway, as seed-protocol WebSocket clients stream them, from a separate "
        "client process. Each step prints one row: the update delay (when a speaker event arrived minus when the "
        "audio up to the position it describes was sent, so it includes the profile's latency) at p50/p95/p99, "
        "the time from stop to report (max, p95), what was lost, the CPU seconds per wall second of each process, "
        "the stage workers' resident memory (peak, and its growth over the idle stack per session), and the "
        "changelog bytes written per session-second, read back from the broker.",
        "A step is HELD when the p95 update delay is at most the profile's latency + 0.5 s, every report came "
        "within 3 s of its stop, and nothing was lost (no session without a report, no error event, no update "
        "dropped, no update step without an update). The ramp stops after the first step not held (unless "
        "--keep-going) and ends with the largest number of sessions held. docs/scaling.md explains the table.",
    )
    capacity.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help="WAV/FLAC to stream, cycled over the sessions; a FILE.rttm beside one gives its speaker count "
        "(default: the dev set ../shared/data/devset with its RTTM counts, or synthesized two-voice conversations "
        "where it is missing)",
    )
    capacity.add_argument("--profile", choices=PROFILES, help="profile the stack runs (default SPEAKERFLOW_PROFILE)")
    capacity.add_argument(
        "--sessions", default="2,4,8,12,16,24,32,48", help="the ramp: sessions at once per step (default %(default)s)"
    )
    capacity.add_argument(
        "--seconds", type=float, default=60.0, help="audio per session, cut from each file (default %(default)g)"
    )
    capacity.add_argument("--workers", help="workers per stage, e.g. segment=2,embed=2,cluster=2 (default one of each)")
    capacity.add_argument("--keep-going", action="store_true", help="run every step, held or not")
    capacity.add_argument(
        "--warmup",
        type=int,
        default=2,
        metavar="N",
        help="sessions run once before the ramp and not scored, so first-use compilation is not measured (default 2)",
    )
    capacity.add_argument("--json", type=Path, metavar="FILE", help="write every figure of every step here as JSON")
    capacity.set_defaults(run=_capacity)

    soak = _described_parser(
        commands,
        "soak",
        "hold live sessions on a fresh stack for minutes; memory per process over time, lag, errors, losses",
        "Start a fresh stack (broker, workers, gateway, in a temporary directory) and hold --sessions live "
        "sessions through its gateway for --minutes: each client streams one recording after another in real "
        "time (the dev set's, cut to --seconds, or the FILEs given), starting the next when the last one's "
        "report has come. Every --interval seconds it samples the resident memory of every process and each "
        "stage's consumer lag and error counters from /metrics.",
        "At the end it prints memory per process at every sample, each process's growth from the first "
        "sample after the warm-up (the first round of sessions) to the last, the peak lag, the errors counted "
        "and what was lost (sessions without a report, error events, updates dropped, update steps without an "
        "update). It exits 1 when a stack process grew more than 5 %, anything was lost or an error was "
        "counted; the Kafka broker's memory is shown but not judged. docs/reliability.md has the figures.",
    )
    soak.add_argument("files", nargs="*", type=Path, metavar="FILE", help="WAV/FLAC to stream (default: the dev set)")
    soak.add_argument("--minutes", type=float, required=True, help="how long to hold the sessions")
    soak.add_argument(
        "--sessions",
        type=int,
        default=4,
        help="live sessions at once (default %(default)s: half the 8 a stack holds on the accurate profile)",
    )
    soak.add_argument("--profile", choices=PROFILES, help="profile the stack runs (default SPEAKERFLOW_PROFILE)")
    soak.add_argument(
        "--seconds", type=float, default=60.0, help="audio per session, cut from each file (default %(default)g)"
    )
    soak.add_argument("--interval", type=float, default=30.0, help="seconds between samples (default %(default)g)")
    soak.add_argument("--json", type=Path, metavar="FILE", help="write every sample and session's figures here as JSON")
    soak.set_defaults(run=_soak)

    evaluation = commands.add_parser(
        "eval",
        help="diarization error (DER, JER) of the stages, in-process or as a running stack serves them",
        description="Run every WAV/FLAC under DIR that has an RTTM of the same name (and a UEM, if any) through "
        "the profile's stages in one process, as fast as the CPU allows, and score the labels with pyannote.metrics "
        "(overlapped speech scored). Several latencies, counts or labels are scored from one segment+embed pass "
        "per recording and printed as one pooled row each. "
        "With --through, stream every recording instead through a running stack's gateway as a live session, "
        "as a client does (several at once, see --speed and --concurrency), and score what the clients are served "
        "the same way: the live labels are the spans of the session's speaker updates, read from the stack's "
        "updates topic (SPEAKERFLOW_KAFKA), and the report is the report event the client receives. Each speaker "
        "count is then one session per recording, and the latency is the one the stack's profile runs.",
    )
    evaluation.add_argument("dir", type=Path, help="folder searched recursively for audio, RTTM and UEM files")
    evaluation.add_argument(
        "--profile",
        choices=PROFILES,
        help="stage chain to score (default accurate); with --through, the one the stack runs "
        "(default SPEAKERFLOW_PROFILE, as `speakerflow up` reads it)",
    )
    evaluation.add_argument(
        "--latency",
        help="seconds live labels trail the audio, or several comma-separated (accurate profile: 0.5 to 5; "
        "default: the profile's)",
    )
    evaluation.add_argument(
        "--num-speakers",
        metavar="COUNT",
        help="the speaker count each session is given: none (estimated, the default), oracle (each reference's "
        "own count), a number, or several comma-separated (none,oracle)",
    )
    evaluation.add_argument(
        "--labels",
        default="live",
        help="what to score: live (the speaker updates' spans), report (the final report), or live,report",
    )
    evaluation.add_argument(
        "--collar", type=float, default=0.25, help="total forgiveness around reference boundaries (default 0.25 s)"
    )
    evaluation.add_argument(
        "--report", action="store_true", help="score the final re-clustered report only (= --labels report)"
    )
    evaluation.add_argument("--rttm-out", type=Path, help="write one hypothesis RTTM per recording here")
    evaluation.add_argument("--json", type=Path, help="write the scores as JSON here")
    evaluation.add_argument(
        "--exclude", action="append", default=[], metavar="URI", help="leave this recording out (repeatable)"
    )
    evaluation.add_argument(
        "--through",
        nargs="?",
        const="",
        metavar="URL",
        help="score a running stack: its gateway's session URL, e.g. ws://127.0.0.1:8000/ws/session "
        "(default from SPEAKERFLOW_GATEWAY_HOST/PORT); --latency, if given, must be its profile's",
    )
    evaluation.add_argument(
        "--speed",
        type=float,
        help="with --through: send audio this many times faster than real time (default 1, real time; "
        "0: as fast as possible)",
    )
    evaluation.add_argument("--concurrency", type=int, help="with --through: sessions streamed at once (default 4)")
    evaluation.add_argument(
        "--enroll",
        type=Path,
        metavar="ENROLL_DIR",
        help="score known-speaker identification instead (docs/speakers.md): enrol every clip in ENROLL_DIR "
        "(or its enroll/) under its file stem, then score how much of the enrolled readers' speech carries their "
        "name (live after each one's first 5 s, and in the report), how much unknown speech carries one, and DER "
        "with names on and off",
    )
    evaluation.add_argument(
        "--identify-threshold",
        metavar="T",
        help="with --enroll: the naming threshold (cosine similarity), or several comma-separated to sweep "
        "(default: the profile's)",
    )
    evaluation.set_defaults(run=_eval)

    export = commands.add_parser(
        "export", help="write a finished session's report (turns and talk time) from the bus as RTTM, JSON, CSV or text"
    )
    export.add_argument("session", help="session id")
    export.add_argument("--format", choices=FORMATS, default="text")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    export.set_defaults(run=_export)

    speakers = commands.add_parser(
        "speakers",
        help="enrol, list and delete known speakers through a gateway's enrolment API (docs/speakers.md)",
        description="Known speakers are named in live sessions and reports when their voice matches. The clips "
        "(WAV, FLAC, MP3 or OGG, any rate and channels) must hold at least 3 s of speech of one voice.",
    )
    speakers.add_argument(
        "--url", help="the gateway, e.g. http://127.0.0.1:8000 (default from SPEAKERFLOW_GATEWAY_HOST/PORT)"
    )
    speaker_actions = speakers.add_subparsers(dest="action", required=True, metavar="ACTION")
    enroll = speaker_actions.add_parser("enroll", help="enrol a new speaker from clips of their voice")
    enroll.add_argument("name", help="the speaker's name, as sessions will show it")
    enroll.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio clips of this speaker only")
    add = speaker_actions.add_parser("add", help="add clips to an enrolled speaker")
    add.add_argument("id", help="the speaker's profile id (see list)")
    add.add_argument("files", nargs="+", type=Path, metavar="FILE")
    listing = speaker_actions.add_parser("list", help="every enrolled speaker")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    delete = speaker_actions.add_parser("delete", help="delete an enrolled speaker; later sessions no longer name them")
    delete.add_argument("id", help="the speaker's profile id (see list)")
    speakers.set_defaults(run=_speakers)

    job = commands.add_parser(
        "job",
        help="diarize several recordings as one batch job through a gateway, the same voice linked across them",
        description="Each recording runs through the dataflow as a session of its own; once all are reported, "
        "their speakers are linked so the same voice has one label in every recording (its enrolled name where "
        "it has one).",
    )
    job.add_argument(
        "--url", help="the gateway, e.g. http://127.0.0.1:8000 (default from SPEAKERFLOW_GATEWAY_HOST/PORT)"
    )
    job_actions = job.add_subparsers(dest="action", required=True, metavar="ACTION")
    submit = job_actions.add_parser("submit", help="submit recordings as one job; prints its id")
    submit.add_argument("files", nargs="+", type=Path, metavar="FILE", help="WAV, FLAC, MP3 or OGG recordings")
    submit.add_argument("--wait", action="store_true", help="follow the job's progress, then print its results")
    submit.add_argument(
        "--export", choices=("json", "csv", "text", "rttm"), help="print the results in this format (implies --wait)"
    )
    job.set_defaults(run=_job)

    keys = commands.add_parser(
        "keys",
        help="create, list and revoke the gateway's API keys (SPEAKERFLOW_AUTH_MODE=required; docs/security.md)",
    )
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_actions.add_parser("create", help="a new key; printed once, only its hash is stored")
    create.add_argument("--tenant", required=True, help="whose sessions, speakers and jobs the key reaches")
    create.add_argument("--scopes", required=True, help="comma-separated: ingest,subscribe,speakers,jobs,admin")
    create.add_argument("--name", help="what the key is for (shown by list)")
    key_actions.add_parser("list", help="every key not revoked (never a secret)")
    revoke = key_actions.add_parser("revoke", help="revoke a key; every gateway refuses it within seconds")
    revoke.add_argument("key_id", metavar="ID", help="the key's id (see list)")
    keys.set_defaults(run=_keys)

    demo = commands.add_parser("demo", help="synthesize a conversation and stream it live through the whole dataflow")
    demo.add_argument("--speakers", type=int, choices=[2, 3], default=2)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    return args.run(args, Settings.from_env())


if __name__ == "__main__":
    sys.exit(main())
