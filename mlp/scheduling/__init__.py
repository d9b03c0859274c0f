"""The pure scheduling core: resources, quota model, ledger, score and scheduler pass.

No I/O, no threads, no clock: callers pass ``now`` in. The mlp service owns the single
`Ledger` instance (one writer), persists its holders, and rebuilds it at start.
"""

from mlp.scheduling.resources import (
    BASE_RESOURCES,
    Resources,
    format_amount,
    format_cpu,
    format_memory,
    parse_count,
    parse_cpu,
    parse_gpu,
    parse_memory,
    parse_resources,
)

__all__ = [
    "BASE_RESOURCES",
    "Resources",
    "format_amount",
    "format_cpu",
    "format_memory",
    "parse_count",
    "parse_cpu",
    "parse_gpu",
    "parse_memory",
    "parse_resources",
]
