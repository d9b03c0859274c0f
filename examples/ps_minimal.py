"""A minimal ParameterServerStrategy training: linear regression on random data.

Run by the platform with TF_CONFIG set for every task: ps and worker tasks serve the cluster,
the chief (coordinator) schedules the training steps onto the workers. Without TF_CONFIG it
trains in one process.
"""

import json
import os

import tensorflow as tf

steps = int(json.loads(os.environ.get("MLP_PARAMS", "{}")).get("steps", 20))
resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
if resolver.task_type in ("worker", "ps"):
    print(f"{resolver.task_type}:{resolver.task_id} serving", flush=True)
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=resolver.task_type,
        task_index=resolver.task_id,
        protocol="grpc",
        start=True,
    )
    server.join()

distributed = bool(resolver.cluster_spec().as_dict())
if distributed:
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
else:
    strategy = tf.distribute.get_strategy()
with strategy.scope():
    w = tf.Variable(tf.zeros([4, 1]), name="w")
    b = tf.Variable(0.0, name="b")
true_w = tf.constant([[1.0], [2.0], [-1.0], [0.5]])


@tf.function
def train_step():
    def replica_fn():
        x = tf.random.normal([64, 4])
        y = x @ true_w + 0.3
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(x @ w + b - y))
        grad_w, grad_b = tape.gradient(loss, [w, b])
        # Plain assign ops: Keras 3 optimizers fail under ParameterServerStrategy (TF 2.21).
        w.assign_sub(0.1 * grad_w)
        b.assign_sub(0.1 * grad_b)
        return loss

    return strategy.run(replica_fn)


if distributed:
    results = [coordinator.schedule(train_step) for _ in range(steps)]
    coordinator.join()
    losses = [float(r.fetch()) for r in results]
else:
    losses = [float(train_step()) for _ in range(steps)]
print(f"chief: trained {steps} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
