"""The command of the suite's local notebook servers: at its first moment it reads the ledger's
reservations (PROBE_URL with PROBE_TOKEN) and its own CUDA_VISIBLE_DEVICES, writes them to
PROBE_OUT as one JSON line, then waits to be stopped (as a server would)."""

import json
import os
import signal
import sys
import urllib.request

req = urllib.request.Request(os.environ["PROBE_URL"],
                             headers={"Authorization": f"token {os.environ['PROBE_TOKEN']}"})
with urllib.request.urlopen(req, timeout=30) as resp:
    seen = {r["id"]: r for r in json.load(resp)["reservations"]}
out = os.environ["PROBE_OUT"]
with open(out + ".tmp", "w") as f:
    f.write(json.dumps({"reservations": seen,
                        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")
os.replace(out + ".tmp", out)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.pause()
