"""Benchmark: a Wide&Deep CTR model on synthetic Criteo-shaped data (26 Zipf categorical fields
over a 10^9 id space, 13 numeric), vlps against what users pick instead, as fractions of the
dense-only ceiling measured in the same run.

Same work, same loop: every case trains the same model (deep embedding dim 16 + wide
embedding dim 1 over the 26 fields, MLP 256-128-1, Adagrad lr 0.05 with initial accumulator 0
for every parameter) on the same batches, read from one TFRecord file the driver writes first
(so no case generates data in its timed loop), each batch exactly once, with the same loop:
a Python loop calling a `tf.function` that runs one training step (forward, backward,
updates), synchronised on the loss at the end of each timed window. The cluster's chief calls
`Trainer.run_steps` instead, which schedules `steps_per_execution` steps per remote call.

  ceiling       dense-only: the same model with both embedding outputs replaced by fixed
                tensors of the same shape (no sparse work); the physical limit here
  vlps          vlps.Trainer in one process (one step per call); its table starts at the
                default size and doubles as the ids arrive, inside the timed rounds
  vlps-presized the same, the table created for the distinct ids of the run's data
                (`initial_rows_per_shard`), as the Keras tables are created at full size:
                no doubling in the timed rounds
  cluster       vlps.Trainer as chief + 2 ps + 1 worker on localhost (4 processes running this
                file with TF_CONFIG); peak RSS is the sum of the 4 processes' peaks
  keras-sparse  keras.layers.Hashing(bins) + Embedding, the embeddings updated sparsely with
                TF's ResourceSparseApplyAdagradV2 on the batch's rows (gradient rows of the
                same bin summed first), dense variables with Keras Adagrad
  keras-hashed  keras.layers.Hashing(bins) + Embedding with Keras 3 Adagrad on everything
                (Keras 3's Adagrad reads and writes the whole accumulator every step)
  tfra          TensorFlow Recommenders-Addons 0.8.1 (bench/vlps_tfra_peer.py) in its own
                venv bench/peers/.venv-tfra, built by `make peers`
Every case runs in its own process(es), all alive at once; the driver runs `--warm` untimed
steps in each, then `--rounds` rounds in which each case in turn (order reversed every other
round) trains `--chunk` steps. samples/s is the median over rounds; "x ceiling" the median of
the per-round ratios to the ceiling. AUC is exact over --test-batches x 4096 held-out samples.

  .venv/bin/python bench/vlps_ctr.py [--batch 4096] [--dim 16] [--rounds 5] [--chunk 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ctr_common  # noqa: E402

from mlp.core.ports import free_ports  # noqa: E402

TFRA_PYTHON = os.path.join(HERE, "peers", ".venv-tfra", "bin", "python")
BYTES_PER_BIN_DIM = 2 * 4  # a Keras Embedding row: float32 value + float32 Adagrad accumulator


# -- the cases (child processes) ------------------------------------------------------------
def evaluate(predict: Any, args: argparse.Namespace) -> dict:
    import numpy as np

    from vlps.data import synthetic_ctr

    labels, scores = [], []
    for features, y in synthetic_ctr(4096, seed=7, split="test", num_batches=args.test_batches,
                                     num_fields=args.fields):
        scores.append(np.asarray(predict(features)).ravel())
        labels.append(y.numpy().ravel())
    return {"auc": ctr_common.auc(np.concatenate(labels), np.concatenate(scores))}


def table_bytes(tables: Any) -> int:
    """Bytes the hash tables hold: buckets x (8-byte key + float32 row)."""
    return sum(s.buckets() * (8 + 4 * t.width) for t in tables for s in t.shards)


def loop(step_fn: Any, iterator: Any) -> Any:
    """The shared timing loop: n one-step calls, synchronised on the last loss."""
    def run(n: int) -> None:
        loss = None
        for _ in range(n):
            loss = step_fn(iterator)
        if loss is not None:
            float(loss)
    return run


def dataset(args: argparse.Namespace) -> Any:
    return ctr_common.read_batches(args.data, args.batch, args.fields)


def adagrad(args: argparse.Namespace) -> Any:
    import vlps

    return vlps.Adagrad(args.lr, initial_accumulator_value=0.0)


def case_vlps(args: argparse.Namespace) -> None:
    """One process, or the chief of a cluster when TF_CONFIG is set."""
    import keras

    import vlps
    from vlps.models import wide_deep

    distributed = bool(os.environ.get("TF_CONFIG"))
    trainer = vlps.Trainer(
        lambda: wide_deep(dim=args.dim, num_fields=args.fields, optimizer=adagrad(args),
                          initial_rows_per_shard=args.presize or None),
        loss=keras.losses.BinaryCrossentropy(), optimizer=adagrad(args), report_every=10**9,
        steps_per_execution=args.spe or None, pack_dense=False if args.no_pack_dense else None,
        cluster=None if distributed else vlps.ClusterInfo())
    trainer.build(lambda ctx=None: dataset(args))
    iterator = trainer.make_iterator(lambda ctx=None: dataset(args))
    longest = [1]  # the most steps a remote call ran (a round's steps cap them)
    if trainer.coordinator is None:
        run = loop(lambda it: trainer.run_steps(it, 1), iterator)
    else:
        def run(n: int) -> None:
            while n > 0:
                k = min(n, trainer.steps_per_execution)
                trainer.run_steps(iterator, k)
                longest[0] = max(longest[0], k)
                n -= k
            trainer.coordinator.join()

    def finish() -> dict:
        out = {"steps": int(trainer.global_step.numpy()), **evaluate(trainer.predict, args),
               "peak_rss_mib": ctr_common.peak_rss_mib(),
               "rows": sum(t.size() for t in trainer.tables[:1]),
               "steps_per_execution": trainer.steps_per_execution,
               "steps_per_call": longest[0]}
        if trainer.coordinator is None:
            out["bytes"] = table_bytes(trainer.tables)
        return out

    ctr_common.serve(run, args.warm, finish)


def case_ceiling(args: argparse.Namespace, input_grad: bool = False) -> None:
    """The dense-only ceiling; with `input_grad` it also computes the loss's gradient with
    respect to the (fixed) embedding outputs, as every embedding model must."""
    import keras
    import tensorflow as tf

    from vlps.models import _head

    f, d = args.fields, args.dim
    inputs = [keras.Input((f, d)), keras.Input((f, 1)), keras.Input((ctr_common.NUM_DENSE,))]
    model = keras.Model(inputs, _head(*inputs, f, d, (256, 128), 0))
    opt = adagrad(args)
    opt.build_dense(list(model.trainable_variables))
    fixed_emb = tf.random.stateless_uniform([args.batch, f, d], [1, 2], -0.05, 0.05)
    fixed_wide = tf.zeros([args.batch, f, 1])
    bce = keras.losses.BinaryCrossentropy()
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def step_fn(iterator: Any) -> tf.Tensor:
        features, labels = next(iterator)
        s = step.assign_add(1)
        with tf.GradientTape() as tape:
            if input_grad:
                tape.watch([fixed_emb, fixed_wide])
            loss = bce(labels, model([fixed_emb, fixed_wide, features["num"]], training=True))
        vs = list(model.trainable_variables)
        fixed = [fixed_emb, fixed_wide] if input_grad else []
        grads = tape.gradient(loss, [*vs, *fixed])
        opt.apply_dense(list(zip(grads[: len(vs)], vs, strict=True)), s)
        # The input gradients are returned (a corner of each) so the graph keeps computing them.
        return loss + 0.0 * tf.add_n([g[0, 0, 0] for g in grads[len(vs):]] + [0.0])

    ctr_common.serve(loop(step_fn, iter(dataset(args))), args.warm,
                     lambda: {"steps": int(step.numpy()), "auc": None, "bytes": 0,
                              "peak_rss_mib": ctr_common.peak_rss_mib()})


def case_keras(args: argparse.Namespace, sparse: bool) -> None:
    import keras
    import tensorflow as tf

    from vlps.models import hashed_wide_deep

    model = hashed_wide_deep(num_bins=args.bins, dim=args.dim, num_fields=args.fields)
    model(next(iter(dataset(args)))[0])
    bce = keras.losses.BinaryCrossentropy()
    tables = [v for v in model.trainable_variables if v.shape[0] == args.bins]
    dense = [v for v in model.trainable_variables if all(v is not t for t in tables)]
    opt = keras.optimizers.Adagrad(args.lr, initial_accumulator_value=0.0)
    opt.build(dense if sparse else list(model.trainable_variables))
    accums = [tf.Variable(tf.zeros(t.shape), trainable=False) for t in tables] if sparse else []

    @tf.function
    def step_fn(iterator: Any) -> tf.Tensor:
        features, labels = next(iterator)
        with tf.GradientTape() as tape:
            loss = bce(labels, model(features, training=True))
        if not sparse:
            vs = list(model.trainable_variables)
            opt.apply(tape.gradient(loss, vs), vs)
            return loss
        grads = tape.gradient(loss, tables + dense)
        opt.apply(grads[len(tables):], dense)
        for t, acc, g in zip(tables, accums, grads[: len(tables)], strict=True):
            # IndexedSlices of the gather: one row per id occurrence; sum rows of one bin.
            unique, idx = tf.unique(g.indices)
            rows = tf.math.unsorted_segment_sum(g.values, idx, tf.size(unique))
            tf.raw_ops.ResourceSparseApplyAdagradV2(
                var=t.value.handle, accum=acc.handle, lr=tf.constant(args.lr),
                epsilon=tf.constant(1e-7), grad=rows, indices=unique)
        return loss

    nbytes = sum(int(t.shape[0]) * int(t.shape[1]) for t in tables) * BYTES_PER_BIN_DIM
    ctr_common.serve(loop(step_fn, iter(dataset(args))), args.warm,
                     lambda: {"steps": int(opt.iterations.numpy()), "bytes": nbytes,
                              **evaluate(lambda x: model(x, training=False), args),
                              "peak_rss_mib": ctr_common.peak_rss_mib()})


# -- the driver -------------------------------------------------------------------------------
def child_args(args: argparse.Namespace) -> list[str]:
    return ["--batch", str(args.batch), "--dim", str(args.dim), "--fields", str(args.fields),
            "--warm", str(args.warm), "--test-batches", str(args.test_batches),
            "--lr", str(args.lr), "--data", args.data, "--spe", str(args.spe),
            *(["--no-pack-dense"] if args.no_pack_dense else [])]


def distinct_ids(path: str, args: argparse.Namespace) -> int:
    """How many distinct ids the training data holds (the rows a table ends with)."""
    import numpy as np

    cats = [f["cat"].numpy().ravel() for f, _ in
            ctr_common.read_batches(path, args.batch, args.fields)]
    return int(np.unique(np.concatenate(cats)).size)


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Case:
    """A case process speaking the ctr_common protocol (plus, for a cluster, its servers)."""

    def __init__(self, key: str, name: str, cmd: list[str], log: str,
                 env: dict[str, str] | None = None, servers: list[Any] | None = None) -> None:
        self.key, self.name, self.servers = key, name, servers or []
        self.error = ""
        self.rates: list[float] = []
        self.result: dict = {}
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env or os.environ.copy(),
                                     start_new_session=True)
        self.logname = log
        self.ready = self._read("ready")

    def _read(self, key: str) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                msg = json.loads(line)
                if key in msg or key == "result":
                    return msg
        self.log.flush()
        with open(self.logname) as f:
            tail = f.read()[-1500:]
        self.error = f"failed (rc {self.proc.wait()}): {tail.strip().splitlines()[-1:]}"
        return {}

    def send(self, line: str, key: str) -> dict:
        if self.error:
            return {}
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read(key)

    def stop(self) -> None:
        for p in [self.proc, *self.servers]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in [self.proc, *self.servers]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.log.close()


def start_cluster(args: argparse.Namespace, log: str) -> Case:
    chief, ps0, ps1, w0 = free_ports(4)
    spec = {"chief": [f"localhost:{chief}"], "ps": [f"localhost:{ps0}", f"localhost:{ps1}"],
            "worker": [f"localhost:{w0}"]}

    def env(task: str, index: int) -> dict[str, str]:
        return {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": spec, "task": {"type": task, "index": index}})}

    servers = [subprocess.Popen([sys.executable, __file__, "--case", "server"], env=env(t, i),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
               for t, i in (("ps", 0), ("ps", 1), ("worker", 0))]
    return Case("cluster", "", [sys.executable, __file__, "--case", "vlps", *child_args(args)],
                log, env=env("chief", 0), servers=servers)


def run_cases(args: argparse.Namespace, specs: list[tuple[str, str, Any]],
              tmp: str) -> list[Case | tuple[str, str, str]]:
    """Start every case (spec: key, name, argv list | 'cluster' | a reason it cannot run),
    alternate the timed rounds, finish them; returns Case objects or (key, name, reason)."""
    cases: list[Any] = []
    try:
        for key, name, how in specs:
            log = os.path.join(tmp, f"{key}.log")
            if isinstance(how, str) and how != "cluster":
                cases.append((key, name, how))
                continue
            print(f"# starting {name}", file=sys.stderr, flush=True)
            if isinstance(how, dict):  # {"cluster": steps_per_execution, "pack": bool}
                c = start_cluster(argparse.Namespace(**{
                    **vars(args), "spe": how["cluster"],
                    "no_pack_dense": not how.get("pack", True)}), log)
                c.key = key
            elif how == "cluster":
                c = start_cluster(args, log)
            else:
                c = Case(key, name, how, log)
            c.name = name
            cases.append(c)
        live = [c for c in cases if isinstance(c, Case)]
        for r in range(args.rounds):
            for c in (live if r % 2 == 0 else live[::-1]):
                msg = c.send(f"run {args.chunk}", "seconds")
                if msg:
                    c.rates.append(args.chunk * args.batch / msg["seconds"])
        for c in live:
            c.result = c.send("finish", "result")
            for i, p in enumerate(c.servers):
                c.result.setdefault("server_rss_mib", []).append(vm_hwm_mib(p.pid))
                if p.poll() is not None and not c.error:
                    c.error = f"failed: cluster task {i} exited (rc {p.returncode})"
    finally:
        for c in cases:
            if isinstance(c, Case):
                c.stop()
    return cases


def ratio_column(cases: list[Any], base_key: str) -> dict[str, float]:
    base = next((c for c in cases if isinstance(c, Case) and c.key == base_key), None)
    out: dict[str, float] = {}
    if base is None:  # not run (--cases)
        return out
    for c in cases:
        if isinstance(c, Case) and not c.error and len(c.rates) == len(base.rates):
            out[c.key] = statistics.median(a / b for a, b in zip(c.rates, base.rates,
                                                                   strict=True))
    return out


def write_data(args: argparse.Namespace, tmp: str) -> str:
    from vlps.data import synthetic_ctr

    path = os.path.join(tmp, "train.tfrecord")
    total = args.warm + args.rounds * args.chunk
    ds = synthetic_ctr(args.batch, seed=7, num_fields=args.fields).take(total)
    ctr_common.write_batches(path, ds)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--fields", type=int, default=26)
    ap.add_argument("--warm", type=int, default=5, help="untimed steps per case")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=10, help="steps per case per round")
    ap.add_argument("--test-batches", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.05, help="Adagrad learning rate (all cases)")
    ap.add_argument("--bins", type=int, default=2**22,
                    help="Keras Hashing bins of the large baselines (a 1/16 one also runs)")
    ap.add_argument("--spe", type=int, default=0,
                    help="cluster steps_per_execution (0: the Trainer's default)")
    ap.add_argument("--no-pack-dense", action="store_true",
                    help="cluster: move dense variables one tensor each (Trainer pack_dense)")
    ap.add_argument("--no-cluster", action="store_true")
    ap.add_argument("--cases", default="",
                    help="comma-separated case keys to run (default all): ceiling, "
                         "ceiling-grad, vlps, vlps-presized, "
                         "cluster, tfra, keras-sparse, keras-hashed, keras-hashed-small")
    ap.add_argument("--json", default="", help="also write all results to this file")
    ap.add_argument("--presize", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--case", default="", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case == "server":
        import vlps

        vlps.run_server_if_needed()  # serves until SIGTERM
        return
    if args.case:
        {"vlps": case_vlps, "ceiling": case_ceiling,
         "ceiling-grad": lambda a: case_ceiling(a, input_grad=True),
         "keras-sparse": lambda a: case_keras(a, True),
         "keras-hashed": lambda a: case_keras(a, False)}[args.case](args)
        return

    wanted = set(args.cases.split(",")) if args.cases else set()
    tmp = tempfile.mkdtemp(prefix="vlps-ctr-")
    args.data = write_data(args, tmp)
    presize = distinct_ids(args.data, args) if not wanted or "vlps-presized" in wanted else 0
    me = [sys.executable, __file__]
    small = args.bins // 16

    def keras_case(kind: str, bins: int) -> list[str]:
        return [*me, "--case", kind, *child_args(args), "--bins", str(bins)]

    tfra: Any = [TFRA_PYTHON, os.path.join(HERE, "vlps_tfra_peer.py"), *child_args(args)]
    if not os.path.exists(TFRA_PYTHON):
        tfra = "not run: peer not installed (run `make peers` to build bench/peers/.venv-tfra)"
    specs = [
        ("ceiling", "dense-only ceiling (embeddings replaced by fixed tensors)",
         [*me, "--case", "ceiling", *child_args(args)]),
        ("ceiling-grad", "dense-only, plus the gradient w.r.t. the embedding outputs",
         [*me, "--case", "ceiling-grad", *child_args(args)]),
        ("vlps", "vlps, one process", [*me, "--case", "vlps", *child_args(args)]),
        ("vlps-presized", "vlps, one process, table presized for the run's ids",
         [*me, "--case", "vlps", *child_args(args), "--presize", str(presize)]),
        ("cluster", "vlps, chief + 2 ps + 1 worker (localhost)",
         "not run (--no-cluster)" if args.no_cluster else "cluster"),
        ("tfra", "TFRA 0.8.1 (TF 2.16.2 + tf_keras), one process", tfra),
        ("keras-sparse", f"Keras Hashing({args.bins:,})+Embedding, sparse Adagrad rows",
         keras_case("keras-sparse", args.bins)),
        ("keras-hashed", f"Keras Hashing({args.bins:,})+Embedding, Keras Adagrad",
         keras_case("keras-hashed", args.bins)),
        ("keras-hashed-small", f"Keras Hashing({small:,})+Embedding, Keras Adagrad",
         keras_case("keras-hashed", small)),
    ]
    if wanted:
        unknown = wanted - {k for k, _, _ in specs}
        if unknown:
            sys.exit(f"vlps_ctr: unknown case(s) {sorted(unknown)}; "
                     f"choose from {[k for k, _, _ in specs]}")
        specs = [s for s in specs if s[0] in wanted]
    try:
        cases = run_cases(args, specs, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = ratio_column(cases, "ceiling")
    ratios_g = ratio_column(cases, "ceiling-grad")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([c.__dict__ if not isinstance(c, Case) else
                       {"key": c.key, "rates": c.rates, "result": c.result, "error": c.error}
                       for c in cases], f, indent=1, default=str)
    total = args.warm + args.rounds * args.chunk
    print(f"Wide&Deep (embedding dim {args.dim} + wide dim 1, MLP 256-128-1, Adagrad lr "
          f"{args.lr}, initial accumulator 0), batch {args.batch}, {args.fields} Zipf(1.2) "
          f"fields over 1e9 ids + 13 numeric, seed 7; {total} steps per case ({args.warm} "
          f"untimed, then {args.rounds} alternated rounds of {args.chunk}); AUC on "
          f"{args.test_batches * 4096:,} held-out samples")
    print("| case | step loop | embedding bytes | samples/s | x dense-only ceiling | "
          "x ceiling + input gradient | peak RSS MiB | AUC |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in cases:
        if not isinstance(c, Case):
            print(f"| {c[1]} | | | {c[2]} | | | | |")
            continue
        if c.error or not c.rates:
            print(f"| {c.name} | | | {c.error or 'no result'} | | | | |")
            continue
        r = c.result
        rss = r.get("peak_rss_mib", 0) + sum(r.get("server_rss_mib", []))
        spe = r.get("steps_per_call", 1) if c.key == "cluster" else 1
        loop_name = "tf.function step" + (f", {spe} steps per remote call" if spe > 1 else "")
        nbytes = (f"{r['bytes']:,}" if r.get("bytes") is not None
                  else "on the ps" if c.key == "cluster" else "not measured")
        auc = f"{r['auc']:.4f}" if r.get("auc") is not None else "-"
        print(f"| {c.name} | {loop_name} | {nbytes} | {statistics.median(c.rates):,.0f} | "
              f"{ratios.get(c.key, float('nan')):.2f} | "
              f"{ratios_g.get(c.key, float('nan')):.2f} | {rss:,.0f} | {auc} |")
    byk = {c.key: c for c in cases if isinstance(c, Case)}
    if "vlps" in byk and byk["vlps"].result:
        print(f"vlps rows: {byk['vlps'].result['rows']:,}; table bytes = buckets x (8 B key + "
              "row of embedding and wide weight, their Adagrad slots and a 4 B step); Keras "
              f"bytes = bins x (dim + 1) x {BYTES_PER_BIN_DIM} B (value + accumulator)")
    if "cluster" in byk and byk["cluster"].result.get("server_rss_mib"):
        per = ", ".join(f"{m:,.0f}" for m in byk["cluster"].result["server_rss_mib"])
        print(f"cluster peak RSS MiB: chief {byk['cluster'].result['peak_rss_mib']:,.0f}; "
              f"ps:0, ps:1, worker:0 {per}")
    fp = {c.key: c.ready.get("data") for c in byk.values() if c.ready.get("data")}
    if fp:
        print(f"data fingerprints (first batch, per case that reports one): {fp}")


if __name__ == "__main__":
    main()
