"""The plain views of `%mlp_jobs` (my jobs) and `%mlp_quota` (my quota and usage): text and
HTML, no live updates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlp_magics import render

__all__ = ["JobsTable", "QuotaView"]

class JobsTable:
    """`%mlp_jobs`: my jobs as a table (text and HTML; no live updates)."""

    HEADERS = ("id", "name", "batch", "state", "reason", "created")

    def __init__(self, jobs: Sequence[Mapping[str, Any]]):
        self.jobs = list(jobs)

    def rows(self) -> list[list[Any]]:
        return [[j.get("id"), j.get("name", ""), j.get("batch") or "", j.get("state", ""),
                 (j.get("reason") or "")[:80], render.ago(j.get("created_at"))]
                for j in self.jobs]

    def __repr__(self) -> str:
        if not self.jobs:
            return "no jobs (submit one with %%mlp_train)"
        return (render.table_text(self.HEADERS, self.rows())
                + "\n%mlp_job ID opens a job's dashboard; %mlp_compare BATCH compares a batch")

    def _repr_html_(self) -> str:
        if not self.jobs:
            return "<i>no jobs (submit one with %%mlp_train)</i>"
        rows = self.rows()
        for row in rows:
            row[3] = render.badge(row[3])
        return render.table_html(self.HEADERS, rows, raw_columns=[3])


class QuotaView:
    """`%mlp_quota`: the GET /quota answer. Per quota group (cohort, personal cap, my usage) a
    table per pool (limit, limit with expansions, used by the group, idle), then my active jobs.
    An answer of another shape is shown as a flat table of what it holds."""

    POOL_COLUMNS = ("resource", "limit", "with expansions", "used by group", "idle")
    POOL_KEYS = ("limit", "with_expansions", "used_by_group", "idle")
    JOB_HEADERS = ("id", "name", "state", "group/pool")

    def __init__(self, quota: Mapping[str, Any]):
        self.quota = dict(quota)

    # ------------------------------------------------------------------ the known shape
    def groups(self) -> list[dict[str, Any]] | None:
        """[{name, cohort, personal_cap, my_usage, pools: [(pool, headers, rows, empty)]}], or
        None when the answer does not have the shape of GET /quota."""
        groups = self.quota.get("groups")
        if not isinstance(groups, Mapping):
            return None
        out = []
        for name, g in groups.items():
            if not isinstance(g, Mapping) or not isinstance(g.get("pools"), Mapping):
                return None
            pools = []
            for pool, numbers in g["pools"].items():
                if not isinstance(numbers, Mapping) or not all(
                        isinstance(numbers.get(k), Mapping) for k in self.POOL_KEYS):
                    return None
                resources: list[str] = []
                for k in self.POOL_KEYS:
                    resources += [r for r in numbers[k] if r not in resources]
                rows = [[r, *(render.fmt_amount(r, numbers[k].get(r, 0)) for k in self.POOL_KEYS)]
                        for r in resources
                        if r in ("cpu", "memory") or any(numbers[k].get(r) for k in self.POOL_KEYS)]
                empty = not any(v for k in self.POOL_KEYS for v in numbers[k].values())
                pools.append((str(pool), rows, empty))
            out.append({"name": str(name), "cohort": g.get("cohort"),
                        "personal_cap": g.get("personal_cap"), "my_usage": g.get("my_usage"),
                        "pools": pools})
        return out

    def jobs(self) -> list[list[Any]]:
        jobs = self.quota.get("active_jobs")
        if not isinstance(jobs, list):
            return []
        return [[j.get("id"), j.get("name", ""), j.get("state", ""),
                 "/".join(str(x) for x in (j.get("group"), j.get("pool")) if x)]
                for j in jobs if isinstance(j, Mapping)]

    def _group_facts(self, g: Mapping[str, Any]) -> list[str]:
        cap = g["personal_cap"]
        return [f"cohort {g['cohort']}" if g["cohort"] else "no cohort",
                f"my usage {render.fmt_resources(g['my_usage'])}",
                f"personal cap {render.fmt_resources(cap)}" if cap else "no personal cap"]

    # ------------------------------------------------------------------ any other shape
    def _flat(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                for i, v in enumerate(value):
                    label = v.get("name") or v.get("group") or v.get("id") or i
                    walk(f"{prefix}[{label}]", v)
            else:
                out.append((prefix, value))

        walk("", self.quota)
        return out

    def _flat_rows(self) -> list[list[Any]]:
        return [[k, v if isinstance(v, int | float) else str(v)] for k, v in self._flat()]

    # ------------------------------------------------------------------ representations
    def __repr__(self) -> str:
        groups = self.groups()
        if groups is None:
            return "quota (as the service reported it)\n" + render.table_text(
                ("what", "value"), self._flat_rows())
        user = self.quota.get("user")
        out = [f"quota of {user}" if user else "my quota"]
        if not groups:
            out.append("  (in no quota group)")
        for g in groups:
            out.append(f"\ngroup {g['name']}: " + " · ".join(self._group_facts(g)))
            for pool, rows, empty in g["pools"]:
                if empty:
                    out.append(f"  pool {pool}: no quota for this group")
                    continue
                out.append(f"  pool {pool}:")
                table = render.table_text(self.POOL_COLUMNS, rows)
                out += [f"    {line}" for line in table.splitlines()]
        jobs = self.jobs()
        if jobs:
            out.append("\nmy active jobs:")
            out += [f"  {line}" for line in render.table_text(self.JOB_HEADERS,
                                                              jobs).splitlines()]
        else:
            out.append("\nno active jobs")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        groups = self.groups()
        if groups is None:
            return ("<div class='mlp-quota'><b>quota</b> (as the service reported it)"
                    + render.table_html(("what", "value"), self._flat_rows()) + "</div>")
        user = self.quota.get("user")
        parts = [f"<b>quota of {render.esc(str(user))}</b>" if user else "<b>my quota</b>"]
        if not groups:
            parts.append("<div><i>in no quota group</i></div>")
        for g in groups:
            parts.append(f"<div style='margin-top:6px'><b>group {render.esc(g['name'])}</b> "
                         f"<span style='color:#57606a'>"
                         f"{render.esc(' · '.join(self._group_facts(g)))}</span></div>")
            for pool, rows, empty in g["pools"]:
                if empty:
                    parts.append(f"<div style='margin-left:12px;color:#57606a'>pool "
                                 f"{render.esc(pool)}: no quota for this group</div>")
                    continue
                parts.append(f"<div style='margin-left:12px'>pool <b>{render.esc(pool)}</b>"
                             f"{render.table_html(self.POOL_COLUMNS, rows)}</div>")
        jobs = self.jobs()
        if jobs:
            rows = [[j[0], j[1], render.badge(j[2]), j[3]] for j in jobs]
            parts.append("<div style='margin-top:6px'><b>my active jobs</b>"
                         + render.table_html(self.JOB_HEADERS, rows, raw_columns=[2]) + "</div>")
        else:
            parts.append("<div style='margin-top:6px;color:#57606a'>no active jobs</div>")
        return "<div class='mlp-quota'>" + "".join(parts) + "</div>"
