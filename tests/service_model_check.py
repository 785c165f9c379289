"""A request checked against botocore's service model as AWS would check it: required members, lengths and
value ranges (min/max), name patterns and enums. botocore's own client-side validation checks only
required members and types (not patterns or enums), and moto accepts what botocore sends, so a job name
with an underscore or an instance type that does not exist passes both and fails only in a real account."""
from __future__ import annotations

import re
from typing import Any

import botocore.session


def _pattern(text: str) -> re.Pattern:
    # AWS's patterns are Java regular expressions, matched against the whole value (the docs show them
    # as ^...$; the model omits the anchors); the few constructs Python lacks are rewritten.
    # Inside character classes: \p{Alnum} and \p{XDigit} exactly; \p{L} (letters), \p{N} (digits) and
    # \p{Z} (separators) by Python's Unicode \w, \d and \s, which are a little wider (Tags' values).
    for java, python in (("\\p{Alnum}", "A-Za-z0-9"), ("\\p{XDigit}", "0-9A-Fa-f"), ("\\p{L}", "\\w"),
                         ("\\p{N}", "\\d"), ("\\p{Z}", "\\s")):
        text = text.replace(java, python)
    return re.compile(text, re.DOTALL)


def problems(shape: Any, value: Any, where: str) -> list[str]:
    """Every way `value` breaks `shape` (a botocore Shape), each naming its path in the request."""
    found: list[str] = []
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{where}: expected a structure, got {type(value).__name__}"]
        for name in shape.required_members:
            if name not in value:
                found.append(f"{where}.{name}: required")
        for name, member in value.items():
            if name not in shape.members:
                found.append(f"{where}.{name}: not a member of {shape.name}")
            else:
                found += problems(shape.members[name], member, f"{where}.{name}")
        return found
    if kind == "list":
        found += [p for i, item in enumerate(value) for p in problems(shape.member, item, f"{where}[{i}]")]
        size = len(value)
    elif kind == "map":
        for key, item in value.items():
            found += problems(shape.key, key, f"{where} key {key!r}")
            found += problems(shape.value, item, f"{where}[{key!r}]")
        size = len(value)
    elif kind == "string":
        size = len(value)
        if "enum" in meta and value not in meta["enum"]:
            found.append(f"{where}: {value!r} is not one of {shape.name}'s {len(meta['enum'])} values")
        if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
            found.append(f"{where}: {value!r} does not match {meta['pattern']}")
    elif kind in ("integer", "long", "float", "double"):
        size = value
    else:
        return found
    if "min" in meta and size < meta["min"]:
        found.append(f"{where}: {size} is below the minimum {meta['min']}")
    if "max" in meta and size > meta["max"]:
        found.append(f"{where}: {size} is above the maximum {meta['max']}")
    return found


def request_problems(service: str, operation: str, params: dict) -> list[str]:
    model = botocore.session.get_session().get_service_model(service)
    return problems(model.operation_model(operation).input_shape, params, operation)


class Recorder:
    """Records the parameters of every call a boto3 client makes (what the SDK sent after serialising)."""

    def __init__(self, client: Any):
        self.calls: list[tuple[str, dict]] = []
        client.meta.events.register("provide-client-params.*.*", self._record)

    def _record(self, params: dict, model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def params(self, operation: str) -> dict:
        return next(p for name, p in self.calls if name == operation)


def record_calls(monkeypatch: Any) -> list[tuple[str, dict]]:
    """Records (operation, parameters) of every call any boto3 client makes while the test runs: for
    libraries that build their own clients (autogluon.cloud)."""
    from botocore.client import BaseClient

    calls: list[tuple[str, dict]] = []
    original = BaseClient._make_api_call

    def recording(self: Any, operation: str, params: dict) -> Any:
        calls.append((operation, dict(params)))
        return original(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recording)
    return calls
