"""The served OpenAPI document against a real service, with schemathesis: for every operation,
requests generated from the document (as a user and as an admin) get no server error, only
documented status codes and content types, and bodies that match the document.

The service is a hub of its own: admin operations generated at random change pools and groups,
which must not disturb the other tests' hub.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from mlptest import Hub, start_hub, stop_hub
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 12  # per operation and caller; enough to cover every documented shape here


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = start_hub(
        tmp_path_factory.mktemp("fuzzhub"),
        ["--LocalProcessBackend.stop_grace_period=1", "--MLPService.poll_interval=0.2"],
    )
    yield h
    stop_hub(h)


def _run(hub: Hub, who: str, admin: bool, skip_admin_ops: bool) -> list[str]:
    base = f"{hub.url}/services/mlp/api/v1"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    token = hub.user_token(who, admin=admin)
    headers = {"Authorization": f"token {token}"}
    failures: list[str] = []
    tested = 0
    calls = [0]
    for result in schema.get_all_operations():
        operation = result.ok()
        if skip_admin_ops and operation.path.startswith("/admin"):
            continue
        strategy = operation.as_strategy()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            calls[0] += 1
            case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=30)

        try:
            check()
        except Exception as e:  # report every operation's first failure, not only the first
            failures.append(f"{operation.method.upper()} {operation.path}: {e}")
        tested += 1
    assert tested >= 20, f"only {tested} operations in the document"
    assert calls[0] >= 5 * tested, f"only {calls[0]} requests for {tested} operations"
    print(f"{who}: {calls[0]} requests over {tested} operations, {len(failures)} failing")
    return failures


@pytest.mark.slow
@pytest.mark.integration
def test_the_document_holds_for_a_user(fuzz_hub: Hub) -> None:
    failures = _run(fuzz_hub, "fuzzer", admin=False, skip_admin_ops=False)
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
@pytest.mark.integration
def test_the_document_holds_for_an_admin(fuzz_hub: Hub) -> None:
    failures = _run(fuzz_hub, "admin", admin=True, skip_admin_ops=False)
    assert not failures, "\n\n".join(failures)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_document_is_consistent() -> None:
    """Every reference resolves, every schema is one schema, and schemathesis can build a
    request strategy for every operation (it refuses schemas it cannot read)."""
    from mlp.api.openapi import build_openapi

    doc = build_openapi("http://127.0.0.1:1/api", "test")
    schemas = doc["components"]["schemas"]
    for ref in set(_refs(doc)):
        kind, _, name = ref.removeprefix("#/components/").partition("/")
        assert name in doc["components"][kind], f"unresolvable reference {ref}"
    for name, schema in schemas.items():
        assert isinstance(schema, dict), f"{name}: a schema must be an object"
    operations = [r.ok() for r in schemathesis.openapi.from_dict(doc).get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        assert operation.as_strategy() is not None
