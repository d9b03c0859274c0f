"""The live dashboards of `%%mlp_train`, `%mlp_job` and `%mlp_compare`.

`base.Dashboard` holds the lifecycle they share (submit or attach, refresh, follow, widget,
text/HTML views, close); `job.JobDashboard` follows one job, `batch.BatchDashboard` a batch or
a set of jobs. Updates come from `mlp_magics.poller.Poller`, on the kernel's own event loop.
"""

from __future__ import annotations

from mlp_magics.dashboards.base import Dashboard
from mlp_magics.dashboards.batch import BatchDashboard
from mlp_magics.dashboards.job import JobDashboard

__all__ = ["BatchDashboard", "Dashboard", "JobDashboard"]
