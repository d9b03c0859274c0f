"""Rules for the single fields of a job spec: names, paths, sources, durations, and the JSON
schema fragments of fields people write in more than one way ("2" or 2, "4Gi" or bytes).

No I/O; every error is a SpecError naming its field. `mlp.core.spec` builds the job spec from these.
"""

from __future__ import annotations

import re
from typing import Any

from mlp.core.alert_rules import ALERT_EVENTS, MAX_ALERTS
from mlp.core.errors import SpecError

TASK_TYPES = ("chief", "ps", "worker")
# A name must survive as a Kubernetes object name, a file name and a URL segment unchanged.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = re.compile(r"^(TF_CONFIG|MLP_.*|JUPYTERHUB_.*)$")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MAX_TASKS_PER_TYPE = 64
MIN_PRIORITY, MAX_PRIORITY = -100, 100
MAX_DEPENDENCIES = 50


def parse_duration(value: Any, field_name: str, *, allow_zero: bool = False) -> float:
    """Seconds from 3600, "3600", "90s", "30m", "2h" or "1d"; must be positive (or zero)."""
    if isinstance(value, bool):
        raise SpecError(field_name, f"expected a duration like 3600, '30m' or '2h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := DURATION_RE.match(value)):
        seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    else:
        raise SpecError(field_name, f"expected a duration like 3600, '30m' or '2h', got {value!r}")
    if seconds == float("inf") or not (seconds >= 0 if allow_zero else seconds > 0):
        raise SpecError(field_name, f"must be a positive duration, got {value!r}")
    return seconds


def require_mapping(value: Any, field_name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(field_name, f"expected an object, got {type(value).__name__}")
    return value


def refuse_unknown(given: dict[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise SpecError(
            f"{where}{unknown[0]}",
            f"unknown field; valid fields are: {', '.join(sorted(known))}",
        )


def validate_name(name: Any, field_name: str = "name") -> str:
    if not isinstance(name, str) or not name:
        raise SpecError(field_name, "a job name is required (a non-empty string)")
    if len(name) > 63:
        raise SpecError(field_name, f"at most 63 characters, got {len(name)}")
    if not NAME_RE.match(name):
        raise SpecError(
            field_name,
            f"{name!r} is not a valid name: use lowercase letters a-z, digits and '-', "
            "starting and ending with a letter or digit (it becomes a file and object name)",
        )
    return name


def validate_relative_path(path: Any, field_name: str) -> str:
    """A path inside a folder: relative, no '..', no NUL, not empty."""
    if not isinstance(path, str) or not path.strip():
        raise SpecError(field_name, "expected a non-empty relative path")
    if "\x00" in path:
        raise SpecError(field_name, "path contains a NUL byte")
    if path.startswith("/") or path.startswith("~"):
        raise SpecError(field_name, f"{path!r} must be relative to your home folder")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise SpecError(field_name, f"{path!r} must not contain '..'")
    if not parts:
        raise SpecError(field_name, "expected a file path")
    return "/".join(parts)


def validate_source(raw: Any) -> dict[str, str]:
    src = require_mapping(raw, "source")
    # "path" doubles as the file inside a git repository, so git wins when both are given.
    kinds: list[str] = [k for k in ("inline", "git") if k in src]
    if "path" in src and "git" not in src:
        kinds.append("path")
    if len(kinds) != 1:
        raise SpecError("source", "give exactly one of 'inline' (code), 'path' or 'git'")
    kind = kinds[0]
    if kind == "inline":
        refuse_unknown(src, {"inline"}, "source")
        code = src["inline"]
        if not isinstance(code, str) or not code.strip():
            raise SpecError("source.inline", "the training code is empty")
        return {"inline": code}
    if kind == "path":
        refuse_unknown(src, {"path"}, "source")
        return {"path": validate_relative_path(src["path"], "source.path")}
    refuse_unknown(src, {"git", "ref", "path"}, "source")
    url = src["git"]
    if not isinstance(url, str) or not re.match(r"^(https?://|ssh://|git://|git@)\S+$", url):
        local = isinstance(url, str) and (url.startswith("file:") or url.startswith("/"))
        raise SpecError(
            "source.git",
            f"expected a git URL (https://, ssh://, git:// or git@host:path), got {url!r}"
            + ("; file:// and local paths are refused" if local else ""),
        )
    ref = src.get("ref", "HEAD")
    if (
        not isinstance(ref, str)
        or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$", ref)
        or (".." in ref)
    ):
        raise SpecError("source.ref", f"{ref!r} is not a valid branch, tag or commit")
    path = validate_relative_path(src.get("path", "train.py"), "source.path")
    return {"git": url, "ref": ref, "path": path}


# ----------------------------------------------------------------------------- JSON schema
# Inputs that people write either as numbers or as quantities; the schema says both.
CPU_SCHEMA = {
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": 10**9},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?m?\s*$", "examples": ["2", "500m"]},
    ]
}
MEMORY_SCHEMA = {
    "oneOf": [
        {"type": "integer", "minimum": 1, "maximum": 2**62},
        {
            "type": "string",
            "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([KMGTPE]i?|[kmgtpe]|)\s*$",
            "examples": ["4Gi", "512Mi"],
        },
    ]
}
GPU_SCHEMA = {
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": 10**9},
        {"type": "string", "pattern": r"^\s*[0-9]+\s*$"},
    ],
    "default": 0,
}
DURATION_SCHEMA = {
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": DURATION_RE.pattern, "examples": ["30m", "2h"]},
    ]
}
PATH_SCHEMA = {"type": "string", "minLength": 1, "pattern": r"^[^/~]", "description": ""}
SOURCE_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "title": "InlineSource",
            "required": ["inline"],
            "additionalProperties": False,
            "properties": {"inline": {"type": "string", "minLength": 1, "pattern": r"\S",
                                      "description": "Python code"}},
        },
        {
            "type": "object",
            "title": "PathSource",
            "required": ["path"],
            "additionalProperties": False,
            "properties": {"path": {**PATH_SCHEMA, "description": "relative to your home folder"}},
        },
        {
            "type": "object",
            "title": "GitSource",
            "required": ["git"],
            "additionalProperties": False,
            "properties": {
                "git": {"type": "string", "pattern": r"^(https?://|ssh://|git://|git@)\S+$"},
                "ref": {"type": "string", "default": "HEAD",
                        "pattern": r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$"},
                "path": {**PATH_SCHEMA, "default": "train.py",
                         "description": "the script inside the repository"},
            },
        },
    ]
}
ALERTS_SCHEMA = {
    "type": "array",
    "maxItems": MAX_ALERTS,
    "items": {
        "type": "object",
        "required": ["on"],
        "additionalProperties": False,
        "properties": {
            "on": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": list(ALERT_EVENTS)},
            },
            "webhook": {"type": "string", "format": "uri", "pattern": "^https?://"},
            "email": {"type": "string", "format": "email"},
        },
        "oneOf": [{"required": ["webhook"]}, {"required": ["email"]}],
    },
}
