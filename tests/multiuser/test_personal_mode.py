"""Started by an ordinary user, the platform runs in personal mode and says so."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from mlptest import REPO, free_port, make_python_reachable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates the ordinary user it starts as (root)"),
]


def test_personal_mode_starts_as_a_non_root_user():
    make_python_reachable()
    base = Path(tempfile.mkdtemp(prefix="mlp-test-", dir="/tmp"))
    os.chmod(base, 0o711)
    name = f"tp{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--create-home", "--home-dir", str(base / "home"), name],
                   check=True)
    import pwd

    pw = pwd.getpwnam(name)
    port = free_port()
    env = {"PATH": f"{REPO / 'node_modules' / '.bin'}:{Path(sys.executable).parent}:/usr/bin:/bin",
           "HOME": str(base / "home"), "USER": name, "MLP_HUB_PORT": str(free_port()),
           "MLP_PROXY_API_PORT": str(free_port()), "MLP_SERVICE_PORT": str(free_port())}

    def become() -> None:
        os.setgroups([pw.pw_gid])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    log = base / "up.log"
    data = base / "home" / "data"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlp", "up", "--port", str(port), "--data-dir", str(data)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(base / "home"),
            preexec_fn=become, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            text = log.read_text(errors="replace")
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/services/mlp/api/v1/openapi.json",
                                     timeout=2).status_code == 200
            except requests.RequestException:
                ready = False
            if ready and "PERSONAL MODE" in text and "resource limits are NOT enforced" in text:
                break
            assert proc.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(0.5)
        assert f"started as {name} (not root)" in text
        assert "personal mode" in text
        st = data.stat()
        assert st.st_uid == pw.pw_uid and st.st_mode & 0o777 == 0o700
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        subprocess.run(["userdel", name], check=False)
        shutil.rmtree(base, ignore_errors=True)
