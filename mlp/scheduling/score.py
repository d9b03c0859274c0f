"""The scheduling score: one explainable number that orders the queue.

``score = priority + pool + aging + runtime + shape_balance + shape_gpu_cpu + shape_oversize
+ demand``, every part reported, so a user can see why their job sits where it does. Higher
scores go first. Aging grows linearly and without bound with time queued, so any job eventually
outranks every job submitted later, whatever their priority: nothing starves. Because aging is
the only part that depends on the clock and it grows at the same rate for every job, the queue's
order never changes by itself; the scheduler sorts once at submit and inserts new jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from traitlets import Float, Int
from traitlets.config import Configurable

from mlp.scheduling.model import Demand
from mlp.scheduling.resources import Resources

__all__ = ["ScoreContext", "ScorePolicy"]

_HOUR = 3600.0


@dataclass(frozen=True)
class ScoreContext:
    """What the score needs to know besides the demand: its pool and its group's quota."""

    pool_capacity: Resources
    pool_priority: int
    group_quota: Resources


class ScorePolicy(Configurable):
    """Weights of the queue score; ``c.ScorePolicy.<weight> = ...`` in jupyterhub_config.py."""

    priority_weight = Float(
        10.0,
        config=True,
        help="""Points per unit of a job's priority. With the default, a priority-3 job starts
        30 points ahead of a priority-0 job, which aging makes up in 2.5 hours.""",
    )
    pool_priority_weight = Float(
        1.0,
        config=True,
        help="""Points per unit of the pool's priority. The production pool has priority 100 by
        default, so promoted jobs go ahead of the rest of their pool's queue.""",
    )
    aging_per_hour = Float(
        12.0,
        config=True,
        help="""Points a job gains per hour spent queued. Linear and unbounded so that nothing
        starves: after (score difference / aging_per_hour) hours an old job outranks any newer
        one. Must be > 0.""",
    )
    runtime_reference = Float(
        _HOUR,
        config=True,
        help="""Seconds of declared max runtime that cost `runtime_weight` points; the penalty
        is runtime_weight * log2(1 + max_runtime / runtime_reference), so shorter jobs go first
        and every doubling of a long runtime costs about the same.""",
    )
    runtime_weight = Float(
        8.0,
        config=True,
        help="Points lost per doubling of the declared max runtime (see runtime_reference).",
    )
    memory_per_cpu = Int(
        4 * 2**30,
        config=True,
        help="""Reference memory per core in bytes (default 4 GiB). Tasks whose memory:cpu ratio
        is further than `balance_tolerance` from it leave the other resource stranded and are
        penalised.""",
    )
    balance_tolerance = Float(
        4.0,
        config=True,
        help="""Factor by which a task's memory per core may differ from `memory_per_cpu`
        without penalty (4: anything between 1 GiB and 16 GiB per core is fine).""",
    )
    balance_weight = Float(
        6.0,
        config=True,
        help="""Points lost per doubling of a task's memory:cpu ratio beyond the tolerance
        (worst task of the job counts).""",
    )
    min_cpu_per_gpu = Float(
        2.0,
        config=True,
        help="""Cores a GPU task should have per GPU to keep it fed; below this the task is
        penalised in proportion to the missing share.""",
    )
    gpu_cpu_weight = Float(
        10.0,
        config=True,
        help="Points lost by a GPU task with no cpu at all (scaled by the missing share).",
    )
    oversize_fraction = Float(
        0.5,
        config=True,
        help="""A single task asking for more than this fraction of its pool's capacity in any
        resource is oversized: hard to place, and it blocks others while it runs.""",
    )
    oversize_weight = Float(
        20.0,
        config=True,
        help="""Points lost by a task that asks for the whole pool; linear between
        `oversize_fraction` (no penalty) and 1.""",
    )
    demand_weight = Float(
        10.0,
        config=True,
        help="""Points lost per multiple of the group's quota the job asks for in total (its
        largest resource counts; capped at 4 multiples), so that a job eating the whole quota
        waits behind jobs that leave room for colleagues.""",
    )

    # -- parts ------------------------------------------------------------------------------
    def static_parts(self, demand: Demand, context: ScoreContext) -> dict[str, float]:
        """The parts that do not depend on the clock (everything but aging)."""
        return {
            "priority": self.priority_weight * demand.priority,
            "pool": self.pool_priority_weight * context.pool_priority,
            "runtime": -self.runtime_weight
            * math.log2(1.0 + demand.max_runtime / self.runtime_reference),
            "shape_balance": -self._balance_penalty(demand),
            "shape_gpu_cpu": -self._gpu_cpu_penalty(demand),
            "shape_oversize": -self._oversize_penalty(demand, context.pool_capacity),
            "demand": -self._demand_penalty(demand, context.group_quota),
        }

    def aging(self, demand: Demand, now: float) -> float:
        return self.aging_per_hour * max(0.0, now - demand.submitted_at) / _HOUR

    def score(
        self, demand: Demand, now: float, context: ScoreContext
    ) -> tuple[float, dict[str, float]]:
        """The score at `now` and its parts; the parts sum to the score."""
        parts = self.static_parts(demand, context)
        parts["aging"] = self.aging(demand, now)
        return math.fsum(parts.values()), parts

    def order_key(self, demand: Demand, context: ScoreContext) -> float:
        """A clock-free sort key: score(now) = order_key + aging_per_hour * now / 3600."""
        static = math.fsum(self.static_parts(demand, context).values())
        return static - self.aging_per_hour * demand.submitted_at / _HOUR

    # -- penalties ---------------------------------------------------------------------------
    def _balance_penalty(self, demand: Demand) -> float:
        worst = 0.0
        tolerance = math.log2(max(self.balance_tolerance, 1.0))
        for task in demand.tasks:
            cpu, memory = task.cpu, task.memory
            if cpu <= 0 or memory <= 0:
                continue  # a task without cpu or memory is judged by the gpu rule, or harmless
            off = abs(math.log2((memory / cpu) / self.memory_per_cpu))
            worst = max(worst, off - tolerance)
        return self.balance_weight * worst

    def _gpu_cpu_penalty(self, demand: Demand) -> float:
        worst = 0.0
        for task in demand.tasks:
            if task.gpu > 0 and self.min_cpu_per_gpu > 0:
                missing = 1.0 - min(1.0, task.cpu / (task.gpu * self.min_cpu_per_gpu))
                worst = max(worst, missing)
        return self.gpu_cpu_weight * worst

    def _oversize_penalty(self, demand: Demand, capacity: Resources) -> float:
        worst = 0.0
        threshold = self.oversize_fraction
        if threshold >= 1.0:
            return 0.0
        for task in demand.tasks:
            for name in task.names():
                cap = capacity[name]
                fraction = task[name] / cap if cap > 0 else 1.0
                if fraction > threshold:
                    worst = max(worst, min(1.0, (fraction - threshold) / (1.0 - threshold)))
        return self.oversize_weight * worst

    def _demand_penalty(self, demand: Demand, quota: Resources) -> float:
        largest = 0.0
        total = demand.total
        for name in total.names():
            limit = quota[name]
            largest = max(largest, total[name] / limit if limit > 0 else 4.0)
        return self.demand_weight * min(largest, 4.0)
