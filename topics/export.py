"""Export the bus contract as JSON Schema for consumers in other languages.

`python -m topics.export` rewrites `topics/schemas/`; `python -m topics.export --check`
exits non-zero when the files there differ from the models (CI runs it via the tests).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from topics.api_keys import ApiKeyRecord
from topics.jobs import BatchJob
from topics.messages import (
    FIELD_HEADER_PREFIX,
    MESSAGE_TYPES,
    SCHEMA_HEADER,
    SCHEMA_VERSION,
    TYPE_HEADER,
    _AudioMessage,
    _Message,
)
from topics.registry import ALL_TOPICS
from topics.speaker_profiles import SpeakerProfile

SCHEMA_DIR = Path(__file__).parent / "schemas"
# Records keyed by something other than a session (`topics.speaker_profiles`), with their own codec.
RECORD_TYPES = {SpeakerProfile.TYPE: SpeakerProfile, BatchJob.TYPE: BatchJob, ApiKeyRecord.TYPE: ApiKeyRecord}


def message_schema(cls: type[_Message] | type[SpeakerProfile] | type[BatchJob] | type[ApiKeyRecord]) -> dict:
    schema = cls.model_json_schema()
    schema["$id"] = f"speakerflow/{cls.TYPE}/v{SCHEMA_VERSION}"
    if issubclass(cls, _AudioMessage):
        schema["properties"].pop("pcm", None)
        schema["description"] = (
            f"{(cls.__doc__ or '').strip()} Record value: raw PCM s16le, 16 kHz, mono. "
            f"Each property below (except session_id, which is the key) travels as header "
            f"'{FIELD_HEADER_PREFIX}<name>' in ASCII."
        )
    return schema


def catalogue() -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "headers": {TYPE_HEADER: "message type", SCHEMA_HEADER: "schema version"},
        "topics": [
            {
                "name": spec.name,
                "description": spec.description,
                "key": spec.key,
                "partitions": spec.partitions,
                "config": spec.kafka_config(),
                "messages": [cls.TYPE for cls in spec.messages],
            }
            for spec in ALL_TOPICS
        ],
    }


def rendered() -> dict[str, str]:
    files = {f"{name}.json": message_schema(cls) for name, cls in {**MESSAGE_TYPES, **RECORD_TYPES}.items()}
    files["topics.json"] = catalogue()
    return {name: json.dumps(body, indent=2, sort_keys=True) + "\n" for name, body in files.items()}


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    expected = rendered()
    present = {p.name for p in directory.glob("*.json")} if directory.exists() else set()
    differing = [
        n for n, text in expected.items() if not (directory / n).exists() or (directory / n).read_text() != text
    ]
    return sorted(differing + sorted(present - expected.keys()))


def write(directory: Path = SCHEMA_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stale in set(p.name for p in directory.glob("*.json")) - rendered().keys():
        (directory / stale).unlink()
    for name, text in rendered().items():
        (directory / name).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the exported schemas are stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale JSON Schemas (run `python -m topics.export`):", ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
