"""The task program of the backend behaviour suite. With the local backend it runs; on kwok nodes
the same environment makes kwok end the pod the same way (mlp/devcluster.py SIM_STAGE):
SIM_<TYPE>_EXIT is the exit code after SIM_<TYPE>_RUN (e.g. "300ms", "2s"); without
them the task runs until it is stopped."""

import json
import os
import re
import sys
import time

role = os.environ["MLP_TASK_TYPE"].upper()
exit_code = os.environ.get(f"SIM_{role}_EXIT")
run = os.environ.get(f"SIM_{role}_RUN", "0s")
out = os.environ.get("SIM_RECORD")
if out:  # where a task records what it saw (local backend only)
    with open(os.path.join(out, f"{role.lower()}-{os.environ['MLP_TASK_INDEX']}.json"), "w") as f:
        json.dump({"TF_CONFIG": json.loads(os.environ["TF_CONFIG"])}, f)
if exit_code is None:
    while True:
        time.sleep(3600)
m = re.fullmatch(r"([0-9.]+)(ms|s)", run)
time.sleep(float(m[1]) / (1000 if m[2] == "ms" else 1) if m else 0)
sys.exit(int(exit_code))
