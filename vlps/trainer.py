"""`Trainer`: the same training script in one process or on the job's TF cluster.

Without TF_CONFIG (or without ps tasks) it trains in-process with local tables. With ps tasks,
ps and worker processes only run a `tf.distribute.Server` (see `cluster.run_server_if_needed`),
and the chief builds the model under ParameterServerStrategy with table shards on the ps tasks,
schedules asynchronous steps on the workers with ClusterCoordinator, reports metrics, evicts,
checkpoints at quiescent points, and restores the latest checkpoint when it starts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from vlps import checkpoint as ckpt_mod
from vlps import optimizers as optimizers_mod
from vlps.cluster import ClusterInfo, TaskWatch, guard_exit, run_in_thread, run_server_if_needed
from vlps.export import export_saved_model
from vlps.layers import tables_of, take_uniques, unique_feature_keys, with_uniques
from vlps.metrics import report
from vlps.placement import Placement, placement_scope
from vlps.table import EmbeddingTable
from vlps.training import DensePacking, train_step

log = logging.getLogger("vlps")


#: Steps per call of the compiled step function when `Trainer(steps_per_execution=None)`;
#: chosen by bench/vlps_cluster.py (see docs/vlps.md, "Cluster step overhead").
DEFAULT_STEPS_PER_EXECUTION = 16

#: Most training steps written out one after another in the compiled step function. A call
#: of up to this many steps is one straight-line graph; a longer call loops over blocks of
#: this many (a `tf.while_loop`) plus the rest written out. Written out, the steps need no
#: loop frame: lowered into Switch/Merge frames, a loop whose body reaches the ps tasks makes
#: every iteration send its loop condition to each ps task and wait, about a quarter of a
#: batch-256 step on a 2-core cluster (docs/vlps.md, "Steps written out instead of a loop").
#: A block of 16 steps traces in ~2 s; 64 in ~12 s.
MAX_UNROLLED_STEPS = 16

#: Calls `fit` schedules on a cluster before it waits for them all to finish (besides the
#: waits at report, eviction and checkpoint boundaries): it keeps the coordinator's queue
#: short, so scheduling never blocks where a lost task could not be noticed.
MAX_PENDING_CALLS = 64


# Errors a lost or restarted task shows up as on the chief.
_LOST_TASK_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                     tf.errors.CancelledError, tf.errors.DeadlineExceededError)


class TaskFailedError(RuntimeError):
    """A ps or worker task failed; the message names it. Restarting the job resumes from the
    last checkpoint."""


class Trainer:
    """Train a Keras model with DynamicEmbedding layers, locally or on a ps cluster.

    Args:
      model_fn: builds the model (called under the trainer's placement, so tables shard onto
        the ps tasks). Called again, locally, to build the serving copy for `export`.
      loss: `loss(labels, predictions) -> scalar`, e.g. keras.losses.BinaryCrossentropy().
      optimizer: vlps optimizer for dense variables (tables carry their own).
      checkpoint_dir: where checkpoints go; the latest one is restored by `fit`.
      checkpoint_every: steps between checkpoints (None: only at the end of fit).
      full_every: every n-th checkpoint is full, the others incremental (1: always full).
      evict_every: steps between eviction passes over tables with an Eviction policy.
      report_every: steps between metric reports (`vlps.report`).
      steps_per_execution: training steps run by one call of the compiled step function (one
        remote call on a cluster): the steps written out one after another in the graph (in
        blocks of `MAX_UNROLLED_STEPS` under a `tf.while_loop` beyond that), so the chief's
        per-call coordination is paid once per that many steps. A call never crosses a
        report, eviction or checkpoint boundary; each distinct length of a call traces the
        step function once. Default `DEFAULT_STEPS_PER_EXECUTION`.
      prefetch: batches each worker (or the local process) prefetches from `dataset_fn`'s
        dataset ahead of the step that consumes them (0: none beyond the dataset's own).
      unique_in_input: compute the `tf.unique` of each id feature that feeds a DynamicEmbedding
        layer unchanged in the input pipeline (with the prefetch, so ahead of the step and off
        its critical path) instead of inside the step. Same ids, same order, same training.
      pack_dense: move the dense variables between the ps tasks and the worker as one tensor
        per ps each way in a step (`vlps.training.DensePacking`) instead of one per variable.
        Default: on a cluster (in one process nothing moves).
      task_timeout: seconds a ps or worker task may go without answering a gRPC handshake
        before the job fails with `TaskFailedError` naming it (`vlps.cluster.TaskWatch`;
        probed every second while the chief waits on the cluster).
    """

    def __init__(
        self, model_fn: Callable[[], keras.Model], *, loss: Callable[[Any, Any], tf.Tensor],
        optimizer: Any = None, checkpoint_dir: str | None = None,
        checkpoint_every: int | None = None, full_every: int = 5, evict_every: int | None = None,
        report_every: int = 100, cluster: ClusterInfo | None = None,
        steps_per_execution: int | None = None, prefetch: int = 2, unique_in_input: bool = True,
        pack_dense: bool | None = None, task_timeout: float = 30.0,
    ) -> None:
        self.info = cluster or ClusterInfo.from_env()
        run_server_if_needed(self.info)  # ps / worker tasks never return from here
        for name, value in (("checkpoint_every", checkpoint_every), ("evict_every", evict_every),
                            ("report_every", report_every), ("full_every", full_every),
                            ("steps_per_execution", steps_per_execution)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"Trainer: {name} must be an int > 0, got {value!r}")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"Trainer: prefetch must be an int >= 0, got {prefetch!r}")
        if isinstance(task_timeout, bool) or not isinstance(task_timeout, (int, float)) \
                or not task_timeout > 0:
            raise ValueError(f"Trainer: task_timeout must be a number of seconds > 0, "
                             f"got {task_timeout!r}")
        self.task_timeout = float(task_timeout)
        self._watch: TaskWatch | None = None
        self._near_step = 0
        self._pending = 0  # calls scheduled on the cluster since the last wait for them all
        self.steps_per_execution = steps_per_execution or DEFAULT_STEPS_PER_EXECUTION
        self.prefetch = prefetch
        self.unique_in_input = unique_in_input
        self._unique_keys: list[str] = []
        self.model_fn = model_fn
        self.loss = loss
        self.optimizer = optimizers_mod.get(optimizer)
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.full_every = full_every
        self.evict_every = evict_every
        self.report_every = report_every
        self.strategy: tf.distribute.Strategy | None = None
        self.coordinator: Any = None
        placement = Placement()
        if self.info.distributed:
            resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
            self.strategy = tf.distribute.ParameterServerStrategy(resolver)
            self.coordinator = tf.distribute.coordinator.ClusterCoordinator(self.strategy)
            n_ps = len(self.info.cluster["ps"])
            placement = Placement(
                [f"/job:ps/replica:0/task:{i}/device:CPU:0" for i in range(n_ps)], self.strategy)
        self.placement = placement
        self.pack_dense = self.info.distributed if pack_dense is None else bool(pack_dense)
        with self.scope():
            self.model = model_fn()
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="vlps_step")
        self.tables: list[EmbeddingTable] = tables_of(self.model)
        self._built = False
        self._resumed = False
        self._saves = 0
        self._step_times: list[tuple[int, float]] = []
        self.last_loss: float | None = None

    def scope(self) -> Any:
        """Placement (and strategy) scope: build models and variables inside it."""
        import contextlib

        stack = contextlib.ExitStack()
        if self.strategy is not None:
            stack.enter_context(self.strategy.scope())
        stack.enter_context(placement_scope(self.placement))
        return stack

    # -- setup ------------------------------------------------------------------------------
    def build(self, dataset_fn: Callable[..., tf.data.Dataset]) -> None:
        """Create the model's dense variables (and slots) from one batch of `dataset_fn`."""
        if self._built:
            return
        features, _ = next(iter(dataset_fn(None)))
        with self.scope():
            # Creates Keras variables (on the ps under the strategy); no table row is created.
            # The call also finds the id features whose unique the input pipeline can compute.
            keys = unique_feature_keys(self.model, features)
            self._unique_keys = keys if self.unique_in_input else []
            self.optimizer.build_dense(list(self.model.trainable_variables), self.strategy)
        self.tables = tables_of(self.model)
        self._built = True

    def dense_state(self) -> dict[str, tf.Variable]:
        """Every dense value a checkpoint holds: model variables, their slots, the step."""
        # Keyed by position, not Keras path: auto-generated layer names ("dense_3") differ
        # between two instances of one architecture in the same process.
        out: dict[str, Any] = {"vlps/global_step": self.global_step}
        for i, v in enumerate(self.model.variables):
            out[f"model/{i:04d}"] = v
        for i, v in enumerate(self.model.trainable_variables):
            for name, slot in zip(self.optimizer.slot_names, self.optimizer.dense_slots(v),
                                  strict=True):
                out[f"slots/{i:04d}/{name}"] = slot
        return out

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, incremental: bool | None = None) -> Path:
        if not self.checkpoint_dir:
            raise ValueError("Trainer.save: no checkpoint_dir configured")
        self._wait()  # a quiescent cut: no step in flight
        if incremental is None:
            incremental = self._saves % self.full_every != 0
        root, tables, dense = self.checkpoint_dir, self.tables, self.dense_state()
        path = self._on_cluster(lambda: ckpt_mod.save(
            root, int(self.global_step.numpy()), tables, dense, incremental=incremental))
        self._saves += 1
        log.info("vlps checkpoint %s", path)
        return path

    def restore(self, path: str | None = None) -> int:
        """Restore `path` (default: the latest checkpoint); returns the restored step (0 when
        there is nothing to restore)."""
        target = Path(path) if path else (
            ckpt_mod.latest(self.checkpoint_dir) if self.checkpoint_dir else None)
        if target is None:
            return 0
        tables, dense = self.tables, self.dense_state()
        manifest = self._on_cluster(lambda: ckpt_mod.restore(target, tables, dense))
        self._resumed = True
        self._saves = 1  # the next save may be incremental to what was restored
        log.info("vlps restored %s (step %d)", target, manifest["step"])
        return int(manifest["step"])

    # -- training ---------------------------------------------------------------------------
    def _make_step_fn(self) -> Callable[..., tf.Tensor]:
        """The compiled step: `step_fn(iterator, blocks, rest)` runs `blocks` (a tensor, or
        None) times `MAX_UNROLLED_STEPS` steps in a `tf.while_loop`, then `rest` (a Python
        int) steps written out, and returns the last step's loss (`_step_args` splits a step
        count). Cached: one trace per trainer and value of `rest` (and loop or not)."""
        fn = getattr(self, "_step_fn", None)
        if fn is not None:
            return fn
        model, loss, opt, gstep = self.model, self.loss, self.optimizer, self.global_step
        # On a cluster the dense variables cross the network packed, one tensor per ps task.
        packing = DensePacking(list(model.trainable_variables)) if self.pack_dense else None
        block = MAX_UNROLLED_STEPS

        def one_step(iterator: Any, step: tf.Tensor) -> tf.Tensor:
            features, labels = next(iterator)
            features = take_uniques(features)
            return tf.cast(train_step(model, loss, opt, features, labels, step, packing),
                           tf.float32)

        @tf.function
        def step_fn(iterator: Any, blocks: tf.Tensor | None, rest: int) -> tf.Tensor:
            # Steps in the loop's blocks (int64, as `_step_args` makes `blocks`).
            done = tf.constant(0, tf.int64) if blocks is None else blocks * block
            n = done + rest
            # The call reserves its n steps with one increment of the global step (a variable
            # on a ps task on a cluster: one remote update per call, not per step); step i of
            # the call is the i-th of them.
            first = gstep.assign_add(n) - n
            last = tf.constant(0.0)
            if blocks is not None:
                for b in tf.range(blocks):
                    for i in range(block):  # a Python loop: the block's steps written out
                        last = one_step(iterator, first + b * block + i + 1)
            for i in range(rest):
                last = one_step(iterator, first + done + i + 1)
            return last

        self._step_fn = step_fn
        return step_fn

    @staticmethod
    def _step_args(n: int) -> tuple[tf.Tensor | None, int]:
        """`step_fn`'s (blocks, rest) for a call of `n` steps."""
        if n <= MAX_UNROLLED_STEPS:
            return None, n
        blocks, rest = divmod(n, MAX_UNROLLED_STEPS)
        return tf.constant(blocks, tf.int64), rest

    def _calls(self, step: int, steps: int) -> Iterator[int]:
        """Steps per call from `step` to `steps`: at most steps_per_execution, and never past
        the next report, eviction or checkpoint boundary (those run between calls)."""
        periods = [p for p in (self.report_every, self.evict_every,
                               self.checkpoint_every if self.checkpoint_dir else None) if p]
        while step < steps:
            n = min(self.steps_per_execution, steps - step)
            for p in periods:
                n = min(n, p - step % p)
            yield n
            step += n

    def make_iterator(self, dataset_fn: Callable[..., tf.data.Dataset]) -> Any:
        """The iterator `fit` trains from: per worker on a cluster (each worker calls
        `dataset_fn(input_context)`), else local; either way with `prefetch` batches ahead."""
        prefetch, keys = self.prefetch, list(self._unique_keys)

        def with_prefetch(ctx: Any = None) -> tf.data.Dataset:
            ds = dataset_fn(ctx)
            if keys:
                ds = ds.map(with_uniques(keys))
            return ds.prefetch(prefetch) if prefetch else ds

        if self.coordinator is None:
            return iter(with_prefetch(None))
        strategy = self.strategy
        assert strategy is not None

        def per_worker() -> Any:
            return strategy.distribute_datasets_from_function(with_prefetch)

        return iter(self.coordinator.create_per_worker_dataset(per_worker))

    def run_steps(self, iterator: Any, n: int) -> Any:
        """Run `n` training steps from `iterator` as one call (scheduled on a worker on a
        cluster). Returns the last loss: a tensor, or a RemoteValue on a cluster."""
        step_fn = self._make_step_fn()
        args = (iterator, *self._step_args(n))
        if self.coordinator is not None:
            self._pending += 1
            return self.coordinator.schedule(step_fn, args=args)
        return step_fn(*args)

    def fit(self, dataset_fn: Callable[..., tf.data.Dataset], steps: int) -> dict[str, Any]:
        """Train until the global step reaches `steps` (resuming from the latest checkpoint).

        `dataset_fn(input_context)` returns a repeated dataset of (features, labels) batches;
        on a cluster each worker calls it. Returns {"step", "loss", "seconds"}."""
        self.build(dataset_fn)
        if self.checkpoint_dir and not self._resumed:
            # Only the first fit of a process resumes; later fits continue in memory.
            self.restore()
        self._resumed = True
        step = self._near_step = int(self._on_cluster(self.global_step.numpy))
        start = time.perf_counter()
        # One task watch for the whole fit (its waits and checkpoints) on a cluster.
        watching = self._watching() if self.coordinator is not None else contextlib.nullcontext()
        try:
            with watching:
                iterator = self.make_iterator(dataset_fn)
                for n in self._calls(step, steps):
                    result = self.run_steps(iterator, n)
                    step = self._near_step = step + n
                    if self._pending >= MAX_PENDING_CALLS:
                        self._wait()
                    self._after_step(step, result)
                self._wait()
                if self.checkpoint_dir:
                    self.save()
        except tf.errors.OpError as e:
            raise self._explain_failure(e, step) from e
        seconds = time.perf_counter() - start
        return {"step": step, "loss": self.last_loss, "seconds": seconds}

    def _after_step(self, step: int, result: Any) -> None:
        if step % self.report_every == 0:
            self._wait()
            value = result.fetch() if hasattr(result, "fetch") else result
            self.last_loss = float(value)
            report(step, {"loss": self.last_loss})
        if self.evict_every and step % self.evict_every == 0:
            self.evict(step)
        if self.checkpoint_dir and self.checkpoint_every and step % self.checkpoint_every == 0:
            self.save()

    @contextlib.contextmanager
    def _watching(self) -> Iterator[TaskWatch]:
        """The running `TaskWatch` (fit's), or one for as long as this block runs."""
        if self._watch is not None:
            yield self._watch
            return
        with TaskWatch(dict(self.info.tasks()), self.task_timeout) as watch:
            self._watch = watch
            try:
                yield watch
            finally:
                self._watch = None

    def _until(self, finished: Callable[[], bool]) -> None:
        """Poll `finished()` until it is true; on a cluster, fail with `TaskFailedError`
        naming the task the watch declares dead meanwhile."""
        pause = 0.001
        with self._watching() as watch:
            while not finished():
                dead = watch.dead()
                if dead:
                    raise self._task_failed(
                        self._near_step, dead,
                        f"no gRPC handshake for {self.task_timeout:g} s")
                time.sleep(pause)
                pause = min(2 * pause, 0.05)

    def _wait(self) -> None:
        """Wait until every call scheduled on the cluster has finished (what the coordinator's
        `join` does), raising its first error, or the `TaskFailedError` of a lost task."""
        if self.coordinator is not None:
            self._until(self.coordinator.done)  # done() raises the error of a failed call
            self._pending = 0

    def _on_cluster(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`: ops the chief itself runs against the ps tasks (checkpoints, eviction,
        the step counter). On a cluster they run in a helper thread while the chief watches
        the tasks: an op on a hung ps would otherwise block the chief for good."""
        if self.coordinator is None:
            return fn(*args)
        finished, out = run_in_thread(fn, *args)
        self._until(finished.is_set)
        if "error" in out:
            raise out["error"]
        return out["value"]

    def evict(self, step: int | None = None) -> dict[str, dict[str, int]]:
        """Run every table's eviction policy now; returns rows removed per table."""
        self._wait()
        step = int(self._on_cluster(self.global_step.numpy)) if step is None else step
        now = time.time()
        self._step_times.append((step, now))
        out = {}
        for t in self.tables:
            if t.eviction.ttl_steps is None and t.eviction.ttl_seconds is None \
                    and t.eviction.max_rows_per_shard is None:
                continue
            ttl = t.eviction.ttl_steps
            if t.eviction.ttl_seconds is not None:
                # The newest step recorded at least ttl_seconds ago bounds "not seen since".
                old = [s for s, ts in self._step_times if ts <= now - t.eviction.ttl_seconds]
                by_time = step - old[-1] if old else None
                ttl = min(x for x in (ttl, by_time) if x is not None) if (ttl or by_time) \
                    else None
            out[t.name] = self._on_cluster(t.evict, step, ttl)
        return out

    def _explain_failure(self, error: tf.errors.OpError, step: int) -> Exception:
        if self.coordinator is None:
            return error
        dead = self.info.unreachable_tasks()
        if not dead and not isinstance(error, _LOST_TASK_ERRORS):
            # Every task answers and the error is not about reaching one (e.g. a graph or
            # input error inside the step): the original error names the cause.
            return error
        return self._task_failed(
            step, dead, f"{type(error).__name__}: {str(error.message).splitlines()[0][:300]}")

    def _task_failed(self, step: int, dead: list[str], cause: str) -> TaskFailedError:
        last = ckpt_mod.latest(self.checkpoint_dir) if self.checkpoint_dir else None
        who = ", ".join(dead) if dead else "a task of the cluster"
        resume = (f"restart the job to resume from {last}" if last
                  else "no checkpoint to resume from")
        guard_exit()
        return TaskFailedError(
            f"vlps training failed near step {step}: {who} unreachable ({cause}); {resume}")

    # -- inference and export ---------------------------------------------------------------
    def predict(self, features: Any) -> tf.Tensor:
        """The model's output for `features`, computed on the chief (tables are read-only)."""
        return self.model(features, training=False)

    def export(self, path: str, input_signature: Any) -> str:
        """SavedModel for plain TensorFlow serving (see vlps.export)."""
        self._wait()
        serving_model = None
        if self.strategy is not None:
            with placement_scope(Placement()):
                serving_model = self.model_fn()
        return export_saved_model(self.model, path, input_signature, serving_model)
