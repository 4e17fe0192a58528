"""The wire form shared by the compacted registries (speaker profiles, batch jobs, API keys).

One record per key: the JSON of a pydantic model, or no value (a tombstone), typed by the
same headers as every bus message. Headers are checked when present: a compacted topic read
by a Faust table hands over key and value only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar, Protocol, TypeVar

from pydantic import ValidationError

from topics.messages import SCHEMA_HEADER, SCHEMA_VERSION, TYPE_HEADER, DecodeError, Headers


class _Record(Protocol):
    TYPE: ClassVar[str]

    @classmethod
    def model_validate_json(cls, data: bytes) -> _Record: ...


Record = TypeVar("Record", bound=_Record)


def record_headers(record_type: type[_Record]) -> Headers:
    return [(TYPE_HEADER, record_type.TYPE.encode()), (SCHEMA_HEADER, str(SCHEMA_VERSION).encode())]


def decode_record(
    record_type: type[Record],
    value: bytes | None,
    headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
    topic: str,
) -> Record | None:
    """The record's model (None: a tombstone); raise DecodeError naming what is wrong."""
    header_map = dict(headers.items() if isinstance(headers, Mapping) else headers)
    raw_type = header_map.get(TYPE_HEADER)
    if raw_type is not None and raw_type != record_type.TYPE.encode():
        raise DecodeError(f"{raw_type!r} record on the {topic} topic")
    if value is None:
        return None
    try:
        return record_type.model_validate_json(value)
    except ValidationError as exc:
        raise DecodeError(f"malformed {record_type.TYPE}: {exc}") from exc
