"""The command of the suite's local notebook servers: at its first moment it reads the ledger's
reservations (PROBE_URL with PROBE_TOKEN) and its own CUDA_VISIBLE_DEVICES, writes them to
PROBE_OUT as one JSON line, then answers HTTP on the address the hub gave it
(JUPYTERHUB_SERVICE_URL, as a real server does) until it is stopped."""

import http.server
import json
import os
import signal
import sys
import urllib.parse
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
where = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])


class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


http.server.HTTPServer((where.hostname or "127.0.0.1", where.port or 80), Answer).serve_forever()
