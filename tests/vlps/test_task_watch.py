"""`vlps.cluster.probe_tasks` and `TaskWatch` against real sockets: a gRPC server answers, a
closed port and a listener that accepts but never speaks (a stopped process) do not, and the
watch declares a task dead only after `timeout` seconds of silence in a row."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from mlp.core.ports import free_ports
from vlps.cluster import ClusterInfo, TaskWatch, probe_tasks


@pytest.fixture
def grpc_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("localhost:0")
    server.start()
    try:
        yield f"localhost:{port}"
    finally:
        server.stop(None)


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A port whose kernel accepts connections that no process answers, as a SIGSTOPped
    task's port does."""
    sock = socket.socket()
    sock.bind(("localhost", 0))
    sock.listen(16)
    try:
        yield f"localhost:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_probe_tells_a_live_server_from_a_closed_and_a_silent_port(grpc_server,
                                                                   silent_listener) -> None:
    closed = f"localhost:{free_ports(1)[0]}"
    started = time.monotonic()
    answered = probe_tasks({"ps:0": grpc_server, "ps:1": silent_listener, "worker:0": closed},
                           timeout=1.0)
    assert answered == {"ps:0": True, "ps:1": False, "worker:0": False}
    assert time.monotonic() - started < 5  # probed at once, not one timeout after another


def test_unreachable_tasks_names_each_silent_task_with_its_address(grpc_server,
                                                                   silent_listener) -> None:
    info = ClusterInfo({"chief": ["localhost:1"], "ps": [grpc_server, silent_listener],
                        "worker": [grpc_server]})
    assert info.tasks() == [("ps:0", grpc_server), ("ps:1", silent_listener),
                            ("worker:0", grpc_server)]
    assert info.unreachable_tasks(timeout=0.5) == [f"ps:1 ({silent_listener})"]


def test_watch_declares_a_task_dead_after_timeout_of_silence_and_forgets_it_on_answer(
        grpc_server, silent_listener) -> None:
    watch = TaskWatch({"ps:0": grpc_server, "ps:1": silent_listener}, timeout=3.0,
                      probe_timeout=0.3)
    # A probe that timed out counts its own wait as silence: silent since t - 0.3.
    assert watch.check_once(now=100.0) == []
    assert watch.check_once(now=102.0) == []
    assert watch.check_once(now=102.8) == [f"ps:1 ({silent_listener})"]
    assert watch.dead() == [f"ps:1 ({silent_listener})"]
    # The task answers again (here: a live server behind the name): silence starts over.
    watch.tasks["ps:1"] = grpc_server
    assert watch.check_once(now=103.0) == []
    watch.tasks["ps:1"] = silent_listener
    assert watch.check_once(now=104.0) == []


def test_watch_thread_reports_a_silent_task_within_its_timeout(grpc_server,
                                                               silent_listener) -> None:
    with TaskWatch({"ps:0": grpc_server, "ps:1": silent_listener}, timeout=1.0,
                   interval=0.2, probe_timeout=0.3) as watch:
        deadline = time.monotonic() + 20
        while not watch.dead():
            assert time.monotonic() < deadline, "the watch never declared ps:1 dead"
            time.sleep(0.1)
    assert watch.dead() == [f"ps:1 ({silent_listener})"]
