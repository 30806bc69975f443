"""Check real traffic against the shipped JSON Schemas (renum_rt/protocol/schemas/).

For integration tests: every frame a test sees on a real socket can go through
``assert_server_frame`` so that the documented schema and the running server cannot
drift apart unnoticed. Validators are built once per schema and cached.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

import renum_rt.protocol

SCHEMA_DIR = Path(renum_rt.protocol.__file__).parent / "schemas"
#: The JSON Schema files (openapi.json is an OpenAPI document, not a JSON Schema).
SCHEMA_FILES = ("frames.server.json", "frames.client.json", "events.json", "http.json")


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The parsed schema file ``name`` (do not mutate: it is cached)."""
    with open(SCHEMA_DIR / name, encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def validator(name: str, definition: str | None = None) -> Draft202012Validator:
    """A validator for a whole schema file, or for one of its ``$defs``."""
    schema = load(name)
    if definition is not None:
        if definition not in schema["$defs"]:
            raise KeyError(f"{name} has no $defs/{definition}")
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return Draft202012Validator(schema)


def errors(name: str, obj: Any, definition: str | None = None) -> list[str]:
    """Every reason ``obj`` fails the schema, as ``path: message`` strings (empty if valid)."""
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator(name, definition).iter_errors(obj)
    ]


def is_valid(name: str, obj: Any, definition: str | None = None) -> bool:
    return validator(name, definition).is_valid(obj)


def _assert_frame(name: str, obj: Any, side: str) -> None:
    # Validate against the frame's own $def first: oneOf failures say nothing useful.
    defs = load(name)["$defs"]
    kind = obj.get("type") if isinstance(obj, dict) else None
    if not isinstance(kind, str) or kind not in defs or defs[kind].get("properties", {}).get("type") != {"const": kind}:
        raise AssertionError(f"not a v1 {side} frame type: {kind!r} in {obj!r:.300}")
    error = best_match(validator(name, kind).iter_errors(obj))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "<root>"
        raise AssertionError(f"invalid {side} frame {kind!r} at {where}: {error.message}\nframe: {obj!r:.500}")
    assert validator(name).is_valid(obj), errors(name, obj)


def assert_server_frame(obj: dict[str, Any]) -> None:
    """Fail unless ``obj`` is a valid v1 server frame; an ``event`` frame carrying a
    domain event of the contract must also carry that event's data shape."""
    _assert_frame("frames.server.json", obj, "server")
    if obj["type"] == "event":
        assert_event(obj["event"], obj["data"])


def assert_client_frame(obj: dict[str, Any]) -> None:
    """Fail unless ``obj`` is a valid v1 client frame."""
    _assert_frame("frames.client.json", obj, "client")


def assert_event(name: str, data: Any) -> None:
    """Fail unless ``data`` fits event ``name`` per events.json."""
    error = best_match(validator("events.json").iter_errors({"event": name, "data": data}))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "<root>"
        raise AssertionError(f"invalid {name!r} event at {where}: {error.message}\ndata: {data!r:.500}")
