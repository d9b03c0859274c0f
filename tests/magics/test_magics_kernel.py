"""The dashboards' polling in a real kernel: an ipykernel started inside alice's notebook server
(spawned by the hub), driven cell by cell over the server's websocket as a frontend does.

What is checked is where the polling runs and when it stops: the poller is an asyncio task on
the kernel's own loop (no thread of its own), its widget updates reach the frontend as comm
messages, and the task is done, with no further request to the service, once the job (or
every job of a batch) has ended, once the widget is closed in the kernel, and once the
frontend closes the widget's comm. Requests are counted with a `requests` response hook on the
dashboard's real client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from user_server import spawned_alice_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WIDGET = "application/vnd.jupyter.widget-view+json"
SHORT = """
import time, mlp_magics
for step in range(1, 4):
    mlp_magics.report(step=step, loss=1.0 / step)
    time.sleep(0.2)
print("done", flush=True)
"""
SLEEPY = "import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n"
# Quiet rounds wait at most max_poll_interval (0.5 s): three of them without a request show
# that nothing polls any more.
QUIET = 1.5

SETUP = """
%load_ext mlp_magics
%config TrainMagics.poll_interval = 0.2
%config TrainMagics.max_poll_interval = 0.5
import asyncio, json, threading
def follow(dash):
    calls = []
    dash.client.session.hooks["response"].append(lambda r, *a, **k: calls.append(r.url))
    return calls
async def until(predicate, timeout=60):
    for _ in range(int(timeout * 10)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("condition not reached in the kernel")
"""
WHERE = """
dash = _
calls = follow(dash)
task = dash._poller.task
print(json.dumps({
    "task_on_kernel_loop": task is not None and task.get_loop() is asyncio.get_running_loop(),
    "cell_on_main_thread": threading.current_thread() is threading.main_thread(),
    "poller_threads": [t.name for t in threading.enumerate() if t.name.startswith("mlp-")],
}))
"""
QUIET_CELL = f"""
before = len(calls)
await asyncio.sleep({QUIET})
print(json.dumps({{"task_done": task.done(), "calls_then": before, "calls_now": len(calls)}}))
"""


@dataclass
class Ran:
    stdout: str  # of this cell
    # every iopub message received while the cell ran (a task's comm messages may name an
    # earlier cell as their parent)
    messages: list[dict[str, Any]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.stdout.strip().splitlines()[-1])

    def widget_model(self) -> str:
        for m in self.messages:
            data = m["content"].get("data") or {}
            if m["msg_type"] in ("execute_result", "display_data") and WIDGET in data:
                return str(data[WIDGET]["model_id"])
        raise AssertionError(f"no widget in the output: {self.messages}")

    def widget_updates(self) -> list[dict[str, Any]]:
        return [m["content"]["data"].get("state") or {} for m in self.messages
                if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"]


class Kernel:
    """Runs cells like a frontend: an execute_request, its iopub messages until idle, the
    reply; a failing cell fails the test with the kernel's traceback."""

    def __init__(self, kc: Any):
        self.kc = kc

    async def run(self, code: str, timeout: float = 120) -> Ran:
        msg_id = self.kc.execute(code, allow_stdin=False)
        ran = Ran("")
        while True:
            msg = await self.kc.get_iopub_msg(timeout=timeout)
            ran.messages.append(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                ran.stdout += msg["content"]["text"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        while True:
            reply = await self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"]["status"] != "ok":
            raise AssertionError("cell failed in the kernel:\n" + code + "\n"
                                 + "\n".join(reply["content"].get("traceback", [])))
        return ran

    def close_comm(self, comm_id: str) -> None:
        """What a frontend sends when it closes a widget's comm."""
        msg = self.kc.session.msg("comm_close", {"comm_id": comm_id, "data": {}})
        msg["channel"] = "shell"
        self.kc.shell_channel.send(msg)


@pytest.fixture(scope="module")
def server(hub: Any) -> Iterator[Any]:
    """alice's server, once for the module (a kernel per test)."""
    with spawned_alice_server(hub) as s:
        yield s


@pytest.fixture
async def kernel(server: Any) -> AsyncIterator[Kernel]:
    km = server.kernel_manager()
    await km.start_kernel()
    kc = km.client()
    try:
        await kc.start_channels()
        await kc.wait_for_ready(timeout=120)
        k = Kernel(kc)
        await k.run(SETUP)
        yield k
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


def assert_on_kernel_loop(where: dict[str, Any]) -> None:
    assert where["cell_on_main_thread"], where
    assert where["task_on_kernel_loop"], where
    assert where["poller_threads"] == [], where  # no thread of its own


def assert_quiet(after: dict[str, Any]) -> None:
    assert after["task_done"], after
    assert after["calls_now"] == after["calls_then"], f"requests after the poller ended: {after}"


async def test_job_dashboard_polls_on_the_kernel_loop_until_the_job_ends(kernel: Kernel):
    shown = await kernel.run("%%mlp_train --name kloop --param steps=3\n" + SHORT)
    shown.widget_model()
    assert_on_kernel_loop((await kernel.run(WHERE)).json())
    ended = await kernel.run("""
await asyncio.wait({task}, timeout=60)
print(json.dumps({"task_done": task.done(), "state": dash.state, "ended": dash.ended,
                  "running": dash._poller.running, "calls": len(calls)}))
""")
    result = ended.json()
    assert result["task_done"] and result["ended"] and not result["running"], result
    assert result["state"] == "Succeeded" and result["calls"] > 0, result
    # the task's widget updates went out to the frontend while the cell awaited
    values = [s.get("value") for s in ended.widget_updates()]
    assert any(isinstance(v, str) and "Succeeded" in v for v in values), values
    assert_quiet((await kernel.run(QUIET_CELL)).json())

    # --wait: the cell holds the loop, so it polls itself, then ends the loop's task
    waited = await kernel.run("%%mlp_train --name kwait --wait\n" + SHORT)
    assert any("Succeeded" in str(m["content"].get("data", {}).get("text/plain", ""))
               for m in waited.messages if m["msg_type"] == "update_display_data"), waited
    after = (await kernel.run("""
dash = next(d for d in get_ipython()._mlp_magics.live if (d.job or {}).get("name") == "kwait")
await asyncio.wait({dash._poller.task}, timeout=10)
print(json.dumps({"task_done": dash._poller.task.done(), "state": dash.state}))
""")).json()
    assert after == {"task_done": True, "state": "Succeeded"}


async def test_closing_the_widget_stops_the_poller(kernel: Kernel, alice: Any):
    await kernel.run("%%mlp_train --name kclose\n" + SLEEPY)
    assert_on_kernel_loop((await kernel.run(WHERE)).json())
    closed = (await kernel.run("""
await until(lambda: dash.state == "Running" and len(calls) >= 2)
dash.widget.close()
await asyncio.wait({task}, timeout=30)
print(json.dumps({"task_done": task.done(), "closed": dash.closed, "job": dash.job_id,
                  "text": repr(dash), "bundle": sorted(dash._repr_mimebundle_())}))
""")).json()
    try:
        assert closed["task_done"] and closed["closed"], closed
        assert "Running" in closed["text"], closed  # the text view keeps the last state
        assert closed["bundle"] == ["text/html", "text/plain"], closed
        assert_quiet((await kernel.run(QUIET_CELL)).json())
    finally:
        alice("DELETE", f"/jobs/{closed['job']}")


async def test_the_frontend_closing_the_comm_stops_the_poller(kernel: Kernel, alice: Any):
    model = (await kernel.run("%%mlp_train --name kcomm\n" + SLEEPY)).widget_model()
    assert_on_kernel_loop((await kernel.run(WHERE)).json())
    job = (await kernel.run("""
await until(lambda: dash.state == "Running" and len(calls) >= 2)
print(json.dumps(dash.job_id))
""")).json()
    try:
        kernel.close_comm(model)  # handled before the next cell: one shell channel, in order
        closed = (await kernel.run("""
await asyncio.wait({task}, timeout=30)
print(json.dumps({"task_done": task.done(), "closed": dash.closed}))
""")).json()
        assert closed == {"task_done": True, "closed": True}
        assert_quiet((await kernel.run(QUIET_CELL)).json())
    finally:
        alice("DELETE", f"/jobs/{job}")


async def test_batch_dashboard_stops_when_every_job_ended(kernel: Kernel):
    shown = await kernel.run('%%mlp_train --name kgrid --grid "lr=1,2"\n' + SHORT)
    shown.widget_model()
    assert_on_kernel_loop((await kernel.run(WHERE)).json())
    ended = (await kernel.run("""
await asyncio.wait({task}, timeout=90)
print(json.dumps({"task_done": task.done(), "ended": dash.ended,
                  "states": sorted(j["state"] for j in dash.jobs.values())}))
""")).json()
    assert ended == {"task_done": True, "ended": True, "states": ["Succeeded", "Succeeded"]}
    assert_quiet((await kernel.run(QUIET_CELL)).json())
