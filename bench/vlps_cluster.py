"""Cluster step overhead: vlps.Trainer as chief + 2 ps + 1 worker on localhost against the same
training in one process, by `steps_per_execution` (training steps per remote call).

The chief schedules `Trainer.run_steps(iterator, k)` calls on the worker (k steps inside one
function; the worker prefetches its batches); one process runs one step per call. Every timed
round has the same number of steps in every case, a multiple of every k compared, so each call
runs the k steps its row names ("steps per call" is what the calls ran). Same model
(bench/vlps_ctr.py's Wide&Deep: embedding dim 16 + wide, MLP 256-128-1, Adagrad), same batches
from one file, same alternated rounds (bench/ctr_common.py); "x one process" is the median of
the per-round ratios. Two settings: batch 256 with 6 fields
(a small real-data-sized model) and the README's batch 4096 with 26 fields. The cluster moves
its dense variables packed, one tensor per ps task each way (`Trainer(pack_dense=...)`, on by
default on a cluster); the "unpacked" rows (`--unpacked`) move them one tensor per variable, for
comparison in the same run.

  .venv/bin/python bench/vlps_cluster.py [--spe 1,16,64] [--unpacked 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import vlps_ctr  # noqa: E402

SETTINGS = ((256, 6), (4096, 26))  # (batch, fields)
MIN_ROUND = 64  # steps per timed round, at least (see round_steps)


def round_steps(spes: list[int]) -> int:
    """Steps per timed round: the smallest multiple of every steps-per-call value that is at
    least MIN_ROUND, so each call of a round runs the steps per call its row names (a round of
    fewer steps would cap them)."""
    n = math.lcm(*spes)
    return n * -(-MIN_ROUND // n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spe", default="1,16,64", help="steps_per_execution values to compare")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--unpacked", default="16",
                    help="steps_per_execution values also run without packed dense variables")
    ap.add_argument("--dim", type=int, default=16)
    args = ap.parse_args()
    spes = [int(x) for x in args.spe.split(",")]
    unpacked = [int(x) for x in args.unpacked.split(",") if x]
    chunk = round_steps(spes + unpacked)
    print(f"vlps cluster (chief + 2 ps + 1 worker, localhost) vs one process; {args.rounds} "
          f"alternated rounds of {chunk} steps, medians")
    print("| batch | fields | case | steps per call | samples/s | x one process |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for batch, fields in SETTINGS:
        run = argparse.Namespace(
            batch=batch, dim=args.dim, fields=fields, warm=max(4, chunk // 4),
            rounds=args.rounds, chunk=chunk, test_batches=1, lr=0.05, bins=0, spe=0, data="",
            no_pack_dense=False)
        tmp = tempfile.mkdtemp(prefix="vlps-cluster-")
        run.data = vlps_ctr.write_data(run, tmp)
        me = [sys.executable, vlps_ctr.__file__]
        specs = [("vlps", "one process", [*me, "--case", "vlps", *vlps_ctr.child_args(run)])]
        specs += [(f"cluster{k}", "chief + 2 ps + 1 worker", {"cluster": k}) for k in spes]
        specs += [(f"cluster{k}-unpacked", "chief + 2 ps + 1 worker, dense variables unpacked",
                   {"cluster": k, "pack": False}) for k in unpacked]
        try:
            cases = vlps_ctr.run_cases(run, specs, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        ratios = vlps_ctr.ratio_column(cases, "vlps")
        for c in cases:
            if not isinstance(c, vlps_ctr.Case):
                continue
            k = c.result.get("steps_per_call", 1) if c.key != "vlps" else 1
            if c.error or not c.rates:
                print(f"| {batch} | {fields} | {c.name} | {k} | {c.error or 'no result'} | |")
                continue
            print(f"| {batch} | {fields} | {c.name} | {k} | {statistics.median(c.rates):,.0f} "
                  f"| {ratios.get(c.key, float('nan')):.2f} |", flush=True)


if __name__ == "__main__":
    main()
