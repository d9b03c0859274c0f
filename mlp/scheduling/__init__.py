"""The pure scheduling core: resources, quota model, ledger, score and scheduler pass.

No I/O, no threads, no clock: callers pass ``now`` in. The mlp service owns the single
`Ledger` instance (one writer) and one `QueueScheduler` over it, persists the ledger's holders,
and rebuilds both at start (`Ledger.from_holders`, then ``advance(now)``). See
docs/scheduling.md for the rules.
"""

from mlp.scheduling.admission import validate_fits_ever
from mlp.scheduling.config import MACHINE, QuotaConfig, effective, resolve_group
from mlp.scheduling.ledger import Ledger
from mlp.scheduling.model import (
    DEFAULT_POOL,
    PRODUCTION_POOL,
    Blocker,
    Decision,
    Demand,
    Expansion,
    Holder,
    Pool,
    Preemption,
    QuotaExceeded,
    QuotaGroup,
    UnknownNameError,
)
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
from mlp.scheduling.scheduler import (
    Explanation,
    Plan,
    QueueScheduler,
    schedule,
)
from mlp.scheduling.score import ScoreContext, ScorePolicy

__all__ = [
    "BASE_RESOURCES",
    "DEFAULT_POOL",
    "MACHINE",
    "PRODUCTION_POOL",
    "Blocker",
    "Decision",
    "Demand",
    "Expansion",
    "Explanation",
    "Holder",
    "Ledger",
    "Plan",
    "Pool",
    "Preemption",
    "QueueScheduler",
    "QuotaConfig",
    "QuotaExceeded",
    "QuotaGroup",
    "Resources",
    "ScoreContext",
    "ScorePolicy",
    "UnknownNameError",
    "effective",
    "format_amount",
    "format_cpu",
    "format_memory",
    "parse_count",
    "parse_cpu",
    "parse_gpu",
    "parse_memory",
    "parse_resources",
    "resolve_group",
    "schedule",
    "validate_fits_ever",
]
