"""A notebook executed headless (nbclient) in alice's real notebook server behind the real hub:
`%%mlp_train --wait` trains a tiny vlps model as a platform job that ends Succeeded with
metrics recorded."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebooks" / "train_vlps.ipynb"


def outputs_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(str(out.get("data", {}).get("text/plain", "")))
        parts.append(str(out.get("data", {}).get("text/html", "")))
        parts.append("\n".join(out.get("traceback", [])))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.integration
async def test_notebook_trains_vlps_in_a_user_server(hub, alice, alice_server, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, km=alice_server.kernel_manager(), timeout=240,
                            kernel_name="python3", allow_errors=False)
    await client.async_execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")

    train_cell = next(c for c in nb.cells if c.source.startswith("%%mlp_train"))
    shown = outputs_text(train_cell)
    assert "vlps-tiny" in shown and "Succeeded" in shown, shown  # the final snapshot
    last = outputs_text(nb.cells[-1])
    assert "Succeeded" in last and "loss" in last, last

    job = next(j for j in alice("GET", "/jobs").json()["jobs"] if j["name"] == "vlps-tiny")
    assert job["state"] == "Succeeded", job
    detail = alice("GET", f"/jobs/{job['id']}").json()
    assert detail["spec"]["params"] == {"steps": 6, "batch": 256}
    metrics = alice("GET", f"/jobs/{job['id']}/metrics").json()
    loss = metrics["tasks"]["worker:0"]["loss"]
    assert [p[0] for p in loss] == [1, 2, 3, 4, 5, 6]
    assert set(metrics["latest"]["worker:0"]["metrics"]) == {"loss", "final_loss"}
    # the job ran in alice's folder, where her server runs too
    assert (hub.data_dir / "users" / "alice" / "mlp-jobs" / f"{job['id']}-vlps-tiny"
            / "metrics.jsonl").is_file()
    assert nb.metadata.get("widgets"), "widget state was recorded by nbclient"
