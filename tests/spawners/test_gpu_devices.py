"""The embedded spawner's GPUs: the devices of its reservation (`devices` in the answer of
`POST /reservations`) are what the server sees as CUDA_VISIBLE_DEVICES, "" when it holds none;
a service that does not answer `devices` leaves the variable alone."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from mlp_spawner.local import LocalMLPSpawner
from mlp_spawner.reservations import ReservationRefused

ANSWER = {"id": "ada/", "user": "ada", "group": "ads", "pool": "default",
          "amount": {"cpu": 1.0, "memory": 2**31, "gpu": 2}, "since": "2026-12-02T10:00:00Z"}


def spawner_with(answer: dict[str, Any]) -> LocalMLPSpawner:
    sp = LocalMLPSpawner(user=SimpleNamespace(name="ada", id=1, url="/user/ada/", spawners={}),
                         orm_spawner=SimpleNamespace(name="", server=None, last_activity=None),
                         data_dir="/nonexistent")
    sp.reserved = answer
    sp._devices = sp.reserved_devices()
    return sp


@pytest.mark.parametrize("devices, visible", [
    (["1", "3"], "1,3"),
    ([0], "0"),
    (["GPU-8f0c2c1e-5a8e-4b7e-9f3b-2d1c0e9a7b6d"], "GPU-8f0c2c1e-5a8e-4b7e-9f3b-2d1c0e9a7b6d"),
    ([], ""),
])
def test_the_reserved_devices_are_what_the_server_sees(devices, visible):
    env = spawner_with({**ANSWER, "devices": devices}).user_env({"CUDA_VISIBLE_DEVICES": "0,1"})
    assert env["CUDA_VISIBLE_DEVICES"] == visible


def test_a_service_without_devices_leaves_the_variable_alone():
    assert "CUDA_VISIBLE_DEVICES" not in spawner_with(ANSWER).user_env({})
    assert spawner_with(ANSWER).user_env({"CUDA_VISIBLE_DEVICES": "2"})["CUDA_VISIBLE_DEVICES"] == "2"


def test_a_malformed_devices_answer_refuses_the_start():
    with pytest.raises(ReservationRefused, match="not a list of device ids") as e:
        spawner_with({**ANSWER, "devices": "0,1"})
    assert e.value.status_code == 503
