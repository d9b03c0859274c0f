"""vlps: a sharded dynamic-embedding parameter server on TensorFlow's own runtime.

Public API: `DynamicEmbedding` (Keras 3 layer), `EmbeddingTable` (sharded hash-table storage),
server-side optimizers (`SGD`, `Adagrad`, `Adam`, `Ftrl`), `Admission` / `Eviction` policies,
`Trainer` (one process or a ps cluster from TF_CONFIG), checkpoints, `export_saved_model`,
and the platform metrics hook `report()`. See docs/vlps.md.
"""

from vlps import checkpoint, initializers
from vlps.checkpoint import CheckpointMismatchError
from vlps.cluster import ClusterInfo, run_server_if_needed
from vlps.export import export_saved_model
from vlps.hashing import hash_strings
from vlps.layers import DynamicEmbedding, capture, tables_of
from vlps.metrics import MetricsCallback, report
from vlps.optimizers import SGD, Adagrad, Adam, Ftrl, Optimizer
from vlps.table import Admission, EmbeddingTable, Eviction
from vlps.trainer import TaskFailedError, Trainer
from vlps.training import Model, train_step

__all__ = [
    "SGD", "Adagrad", "Adam", "Admission", "CheckpointMismatchError", "ClusterInfo",
    "DynamicEmbedding", "EmbeddingTable", "Eviction", "Ftrl", "MetricsCallback", "Model",
    "Optimizer", "TaskFailedError", "Trainer", "capture", "checkpoint", "export_saved_model",
    "hash_strings", "initializers", "report", "run_server_if_needed", "tables_of", "train_step",
]
