"""`%mlp_quota`, the queue part of the dashboard and refused submissions against a REAL hub with
quotas (one extra hub for the module): the answers of GET /quota, a job's `queue` and
`reservation`, and the service's 400/403 refusals as the magics show them."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from mlptest import Api, Hub, start_hub, stop_hub

from mlp_magics.dashboards import JobDashboard
from mlp_magics.magics import JobFailed
from mlp_magics.tables import QuotaView

pytestmark = pytest.mark.integration

SLEEP = "import time\ntime.sleep(300)\n"
QUOTAS = """
c.QuotaConfig.pools = {'default': {'capacity': {'cpu': 8, 'memory': '32Gi'}}}
c.QuotaConfig.groups = {
    'ads': {'cohort': 'ml', 'limits': {'default': {'cpu': 2, 'memory': '8Gi'}},
            'lend_limit': {'default': {'cpu': 2, 'memory': '8Gi'}},
            'member_caps': {'alice': {'cpu': 4, 'memory': '16Gi'}}},
    'search': {'cohort': 'ml', 'limits': {'default': {'cpu': 2, 'memory': '8Gi'}},
               'lend_limit': {'default': {'cpu': 2, 'memory': '8Gi'}}},
}
c.QuotaConfig.default_group_quota = {'limits': {'default': {'cpu': 1, 'memory': '4Gi'}}}
c.MLPService.default_task_cpu = '1'
c.MLPService.default_task_memory = '1Gi'
"""


@pytest.fixture(scope="module")
def qhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = start_hub(tmp_path_factory.mktemp("magics-qhub"),
                    ["--LocalProcessBackend.stop_grace_period=1",
                     "--MLPService.poll_interval=0.2"], QUOTAS)
    try:
        for group, members in {"ads": ["alice"], "search": ["bob"]}.items():
            for user in members:
                hub.user_token(user)
            r = hub.hub_api("POST", f"/groups/{group}", json={"users": members})
            assert r.status_code == 201, r.text
        yield hub
    finally:
        stop_hub(hub)


@pytest.fixture
def qshell(qhub: Hub, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """An IPython shell with mlp_magics, as alice's user server would have it on qhub."""
    monkeypatch.setenv("MLP_URL", qhub.service_url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", qhub.user_token("alice"))
    monkeypatch.delenv("MLP_TOKEN", raising=False)
    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("mlp_magics")
    magics = ip._mlp_magics
    magics.default_workers, magics.default_ps = 1, 0  # whatever %config earlier tests ran
    magics.poll_interval = 0.2
    magics.max_poll_interval = 0.4
    magics.service_url = None
    try:
        yield ip
    finally:
        ip.extension_manager.unload_extension("mlp_magics")
        alice = Api(qhub, qhub.user_token("alice"))
        for j in alice("GET", "/jobs?state=Queued,Starting,Running").json()["jobs"]:
            alice("DELETE", f"/jobs/{j['id']}")


def until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def train(shell: InteractiveShell, line: str, cell: str = SLEEP) -> JobDashboard:
    dash = shell.run_cell_magic("mlp_train", line, cell)
    assert isinstance(dash, JobDashboard)
    dash.widget  # noqa: B018 (built: the poller updates it from here on)
    return dash


def test_quota_view_of_the_real_answer(qshell: InteractiveShell):
    dash = train(qshell, "--name holder --cpu 1 --memory 2Gi")
    until(lambda: dash.state == "Running", what="holder running")
    view = qshell.run_line_magic("mlp_quota", "")
    assert isinstance(view, QuotaView) and view.groups() is not None, view.quota
    text = repr(view)
    assert "quota of alice" in text
    assert "group ads: cohort ml · my usage cpu 1, memory 2Gi · personal cap cpu 4, " \
           "memory 16Gi" in text, text
    assert "pool default:" in text
    # limit, with expansions, used by the group, idle: memory in binary units, cpu in cores
    row = next(line.split() for line in text.splitlines() if line.strip().startswith("memory"))
    assert row == ["memory", "8Gi", "8Gi", "2Gi", "6Gi"], text
    row = next(line.split() for line in text.splitlines() if line.strip().startswith("cpu"))
    assert row == ["cpu", "2", "2", "1", "1"], text
    assert "8589934592" not in text
    job_line = next(line for line in text.splitlines()
                    if line.strip().startswith(f"{dash.job_id} "))
    assert "holder" in job_line and "Running" in job_line and "ads/default" in job_line
    page = view._repr_html_()
    assert page.count("<table") == 2 and "with expansions" in page and "6Gi" in page
    assert "ads/default" in page and "Running</span>" in page
    # an answer of another shape still reads
    odd = QuotaView({"user": "x", "groups": [{"name": "team", "limits": {"cpu": 4}}]})
    assert odd.groups() is None and "groups[team].limits.cpu" in repr(odd)
    assert "<table" in odd._repr_html_()


def test_refusals_show_the_service_message(qshell: InteractiveShell, qhub: Hub):
    # never fits: ads may reach 2 cpu of its own + 2 lent by its cohort
    dash = train(qshell, "--name huge --cpu 5")
    assert dash.job is None and dash.error is not None
    assert "could never start" in dash.error and "HTTP 400 never_fits" in dash.error
    assert "group 'ads', cpu: requested 5, available 4" in dash.error, dash.error
    assert html.escape("group 'ads', cpu: requested 5, available 4") in dash._ui["error"].value
    assert dash._ui["retry"].layout.display == "none"
    assert "not submitted" in repr(dash) and "requested 5, available 4" in repr(dash)
    with pytest.raises(JobFailed, match="could never start"):
        qshell.run_cell_magic("mlp_train", "--name huge --memory 20Gi --wait", SLEEP)
    # invalid_spec names its field
    dash = train(qshell, "--name nowhere --pool nosuch")
    assert "unknown pool 'nosuch'" in dash.error and "HTTP 400 invalid_spec" in dash.error
    # a dependency on another user's job: 403
    bob = Api(qhub, qhub.user_token("bob"))
    theirs = bob.submit({"name": "bobs", "source": {"inline": "pass"}})
    dash = train(qshell, f"--name mine --after {theirs['id']}")
    assert f"job {theirs['id']} belongs to another user" in dash.error
    assert "HTTP 403 forbidden" in dash.error and "belongs to another" in repr(dash)


def test_queue_borrowing_and_dependencies_in_the_dashboard(qshell: InteractiveShell):
    own = train(qshell, "--name own --cpu 2")
    until(lambda: own.state == "Running", what="own running")
    assert "holds cpu 2, memory 1Gi in ads/default" in own._ui["queue"].value
    assert "preemptible" not in repr(own)

    borrowed = train(qshell, "--name borrowed --cpu 2")
    until(lambda: borrowed.state == "Running", what="borrowed running")
    until(lambda: "preemptible" in borrowed._ui["queue"].value, what="preemptible shown")
    # ads has memory of its own: only the cpu is borrowed from its cohort
    assert "preemptible (running on borrowed quota: cpu 2 borrowed)" in repr(
        borrowed), repr(borrowed)
    assert borrowed.job["reservation"]["preemptible"] is True

    behind = train(qshell, "--name behind --cpu 1")
    time.sleep(0.5)
    assert behind.state == "Queued"
    until(lambda: "blocked:" in repr(behind), what="blocking reason")
    queue = behind.job["queue"]
    text = repr(behind)
    assert "queued in ads/default · first in line · score" in text, text
    for b in queue["blocking"]:  # the service's sentences, with their numbers
        assert f"blocked: {b['reason']}" in text
        assert b["scope"] in b and b["resource"]
    assert "blocked:" in behind._ui["queue"].value and "first in line" in behind._ui[
        "queue"].value

    after = train(qshell, f"--name after --after {own.job_id}")
    until(lambda: after.job is not None and after.job.get("queue"), what="dependency wait")
    assert f"waiting for job {own.job_id} to succeed" in repr(after), repr(after)
    assert f"waiting for job {own.job_id}" in after._ui["queue"].value

    qshell.run_line_magic("mlp_cancel", str(own.job_id))
    until(lambda: behind.state == "Running", what="behind running after the cancel")
    assert "blocked:" not in repr(behind) and "holds cpu 1" in repr(behind)
    until(lambda: after.ended, what="the dependent job ends")
    assert after.state in ("Cancelled", "Failed")
