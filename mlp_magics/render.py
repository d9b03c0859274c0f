"""Pure rendering of jobs, metrics and tables as text, HTML and SVG (no widgets, no I/O).

The dashboards put this HTML into their widgets; the same functions give the text/plain and
text/html representations shown where no widget frontend exists (nbconvert, a console).
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from mlp.scheduling.resources import format_memory

STATE_COLORS = {
    "Queued": "#8a6d00",
    "Starting": "#1f6feb",
    "Running": "#1f6feb",
    "Succeeded": "#1a7f37",
    "Failed": "#cf222e",
    "Cancelled": "#57606a",
    "TimedOut": "#cf222e",
    "Preempted": "#8a6d00",
}
TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled", "TimedOut"})
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
# Metric names that describe progress rather than quality: not worth a curve of their own.
PROGRESS_METRICS = ("total_steps", "epoch")

esc = html.escape


def badge(state: str | None) -> str:
    color = STATE_COLORS.get(state or "", "#57606a")
    return (f"<span style='background:{color};color:white;border-radius:9px;padding:1px 8px;"
            f"font-size:90%'>{esc(state or 'unknown')}</span>")


def fmt_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    return f"{value:.4g}"


def fmt_params(params: Mapping[str, Any] | None) -> str:
    return " ".join(f"{k}={v}" for k, v in (params or {}).items())


def primary_task(tasks: Iterable[str]) -> str | None:
    """The task whose metrics speak for the job: the chief, else the first worker."""
    names = sorted(tasks)
    for wanted in ("chief:0", "worker:0"):
        if wanted in names:
            return wanted
    return names[0] if names else None


def latest_metrics(metrics: Mapping[str, Any] | None) -> tuple[int | None, dict[str, Any]]:
    """(step, {name: value}) of the primary task's latest report."""
    latest = (metrics or {}).get("latest") or {}
    task = primary_task(latest)
    if task is None:
        return None, {}
    rec = latest[task]
    return rec.get("step"), dict(rec.get("metrics") or {})


def total_steps(job: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None) -> int | None:
    """The planned number of steps: a `total_steps` metric, else a steps-like parameter."""
    _, values = latest_metrics(metrics)
    total = values.get("total_steps")
    if total is None:
        params = ((job or {}).get("spec") or {}).get("params") or {}
        for key in ("total_steps", "max_steps", "steps"):
            if isinstance(params.get(key), int) and not isinstance(params.get(key), bool):
                total = params[key]
                break
    try:
        return int(total) if total is not None and total > 0 else None
    except (TypeError, ValueError):
        return None


def metric_names(metrics: Mapping[str, Any] | None) -> list[str]:
    names: set[str] = set()
    for series in ((metrics or {}).get("tasks") or {}).values():
        names.update(series)
    return sorted(n for n in names if n not in PROGRESS_METRICS)


# ------------------------------------------------------------------------- SVG
def svg_chart(
    series: Mapping[str, Sequence[Sequence[float]]],
    *,
    title: str = "",
    width: int = 420,
    height: int = 200,
    max_legend: int = 10,
) -> str:
    """A line chart of `label -> [(x, y), ...]` as standalone SVG (renders in nbconvert too)."""
    clean = {
        label: [(float(p[0]), float(p[1])) for p in pts
                if len(p) >= 2 and math.isfinite(float(p[0])) and math.isfinite(float(p[1]))]
        for label, pts in series.items()
    }
    clean = {k: v for k, v in clean.items() if v}
    head = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' style='font:11px sans-serif'>")
    if not clean:
        return (f"{head}<text x='{width // 2}' y='{height // 2}' text-anchor='middle' "
                f"fill='#888'>{esc(title)}: no data yet</text></svg>")
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.05 or 0.5), y1 + (abs(y1) * 0.05 or 0.5)
    left, right, top, bottom = 52, 10, 18, 22
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [head,
             f"<text x='{left}' y='12' font-weight='bold'>{esc(title)}</text>",
             f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' "
             "stroke='#ccc'/>",
             f"<text x='{left - 4}' y='{top + 8}' text-anchor='end'>{fmt_number(y1)}</text>",
             f"<text x='{left - 4}' y='{top + ph}' text-anchor='end'>{fmt_number(y0)}</text>",
             f"<text x='{left}' y='{height - 6}'>{fmt_number(x0)}</text>",
             f"<text x='{left + pw}' y='{height - 6}' text-anchor='end'>step "
             f"{fmt_number(x1)}</text>"]
    for i, (label, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        if len(pts) == 1:
            x, y = pts[0]
            parts.append(f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='2.5' fill='{color}'/>")
        else:
            parts.append(f"<polyline points='{coords}' fill='none' stroke='{color}' "
                         "stroke-width='1.5'/>")
        if i < max_legend:
            parts.append(f"<text x='{left + pw - 4}' y='{top + 12 + 12 * i}' text-anchor='end' "
                         f"fill='{color}'>{esc(label[:40])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def metric_chart(metrics: Mapping[str, Any] | None, name: str, **kw: Any) -> str:
    """One metric of one job, one curve per task."""
    tasks = (metrics or {}).get("tasks") or {}
    series = {task: [(p[0], p[1]) for p in per.get(name, [])] for task, per in tasks.items()}
    return svg_chart({k: v for k, v in series.items() if v}, title=name, **kw)


# ------------------------------------------------------------------------- one job
def fmt_amount(resource: str, value: Any) -> str:
    """One resource amount as people read it: memory in binary units (`format_memory`), cpu in
    cores (``0.5``, ``2``), anything else as a count."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if not math.isfinite(value):
        return "unlimited" if value > 0 else str(value)
    if resource == "memory":
        return format_memory(int(value))
    if resource == "cpu":
        return f"{round(float(value), 3):g}"
    return fmt_number(value)


def fmt_resources(amounts: Mapping[str, Any] | None,
                  keep: Sequence[str] = ("cpu", "memory")) -> str:
    """``cpu 2, memory 8Gi``: zero amounts are left out except those named in `keep`."""
    if not isinstance(amounts, Mapping) or not amounts:
        return "none"
    parts = [f"{k} {fmt_amount(k, v)}" for k, v in amounts.items() if k in keep or v]
    return ", ".join(parts) if parts else "none"


def _ordinal_position(position: Any) -> str:
    if not isinstance(position, int) or isinstance(position, bool):
        return f"queue position {fmt_number(position)}"
    if position == 0:
        return "first in line"
    return f"{position} job{'s' if position > 1 else ''} ahead in the queue"


def fmt_score(score: Any, parts: Mapping[str, Any] | None) -> str:
    """``score -1.05 (runtime -1, aging 0.02)``: the non-zero parts, largest first."""
    text = f"score {fmt_number(round(score, 3)) if isinstance(score, float) else fmt_number(score)}"
    shown = [(k, v) for k, v in (parts or {}).items()
             if isinstance(v, int | float) and not isinstance(v, bool) and round(v, 3) != 0]
    shown.sort(key=lambda kv: -abs(kv[1]))
    if shown:
        text += " (" + ", ".join(f"{k} {round(v, 3):g}" for k, v in shown) + ")"
    return text


def blocker_text(b: Mapping[str, Any]) -> str:
    """One blocking entry: the service's sentence (it names the quota and the numbers), or one
    built from its fields (`scope`, `<scope>`: name, `resource`, `requested`, `available`)."""
    reason = b.get("reason")
    if isinstance(reason, str) and reason:
        return reason
    scope = str(b.get("scope") or "")
    name = b.get(scope) if scope else None
    what = " ".join(str(x) for x in (scope, name) if x not in (None, "", []))
    res = b.get("resource")
    need = ""
    if res:
        need = (f"{res} requested {fmt_amount(res, b.get('requested'))}, "
                f"available {fmt_amount(res, b.get('available'))}")
    return ": ".join(x for x in (what or "blocked", need) if x)


def blocking_numbers(b: Mapping[str, Any]) -> str:
    """``group 'ads', cpu: requested 5, available 4`` (empty when the entry has no resource)."""
    res = b.get("resource")
    if not res:
        return ""
    scope = str(b.get("scope") or "")
    name = b.get(scope) if scope else None
    where = f"{scope} {name!r}" if scope and isinstance(name, str) else scope
    return (f"{where + ', ' if where else ''}{res}: requested {fmt_amount(res, b.get('requested'))}"
            f", available {fmt_amount(res, b.get('available'))}")


def _waiting_for(queue: Mapping[str, Any]) -> list[Any]:
    deps = queue.get("waiting_for")
    if isinstance(deps, list) and deps:
        return deps
    for b in queue.get("blocking") or []:
        if isinstance(b, Mapping) and b.get("scope") == "dependency":
            dep = b.get("dependency")
            return dep if isinstance(dep, list) else [dep] if dep is not None else []
    return []


def queue_lines(queue: Mapping[str, Any] | None, job: Mapping[str, Any] | None = None
                ) -> list[str]:
    """What a queued job waits for: dependencies, or its place, score and blocking reasons."""
    if not isinstance(queue, Mapping) or not queue:
        return []
    job = job or {}
    deps = _waiting_for(queue)
    if deps or "waiting_for" in queue:
        ids = ", ".join(str(d) for d in deps) or "?"
        return [f"waiting for job{'s' if len(deps) > 1 else ''} {ids} to succeed "
                "(not in the queue before that)"]
    where = "/".join(str(x) for x in (queue.get("group") or job.get("group"),
                                      queue.get("pool") or job.get("pool")) if x)
    head = [f"queued in {where}" if where else "queued", _ordinal_position(queue.get("position"))]
    if queue.get("score") is not None:
        head.append(fmt_score(queue.get("score"), queue.get("score_parts")))
    lines = [" · ".join(head)]
    for b in queue.get("blocking") or []:
        if isinstance(b, Mapping):
            lines.append(f"blocked: {blocker_text(b)}")
    return lines


def reservation_lines(reservation: Mapping[str, Any] | None) -> list[str]:
    """What an admitted job holds; borrowed quota makes it preemptible."""
    if not isinstance(reservation, Mapping) or not reservation:
        return []
    where = "/".join(str(x) for x in (reservation.get("group"), reservation.get("pool")) if x)
    line = f"holds {fmt_resources(reservation.get('amount'))}{' in ' + where if where else ''}"
    if reservation.get("preemptible"):
        borrowed = reservation.get("borrowed")
        lent = f": {fmt_resources(borrowed, keep=())} borrowed" if borrowed else ""
        return [line, f"preemptible (running on borrowed quota{lent}); it is stopped and "
                      "requeued if the lending group needs its quota back"]
    return [line]


def placement_lines(job: Mapping[str, Any] | None) -> list[str]:
    if not job:
        return []
    if job.get("state") == "Queued" and job.get("queue"):
        return queue_lines(job.get("queue"), job)
    return reservation_lines(job.get("reservation"))


def job_text(
    job: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None = None,
    logs: Sequence[str] = (),
    log_task: str | None = None,
    error: str | None = None,
    spec: Mapping[str, Any] | None = None,
) -> str:
    if job is None:
        name = (spec or {}).get("name", "job")
        lines = [f"mlp job {name!r}: not submitted"]
        if error:
            lines.append(f"  error: {error}")
        return "\n".join(lines)
    lines = [f"mlp job {job.get('id')} {job.get('name')!r}: {job.get('state')}"
             f"{' — ' + job['reason'] if job.get('reason') else ''}"]
    lines += [f"  {line}" for line in placement_lines(job)]
    step, values = latest_metrics(metrics)
    if step is not None:
        total = total_steps(job, metrics)
        lines.append(f"  progress: step {fmt_number(step)}"
                     f"{' / ' + fmt_number(total) if total else ''}")
    if values:
        lines.append("  metrics: " + " ".join(f"{k}={fmt_number(v)}" for k, v in values.items()))
    if logs:
        lines.append(f"  log {log_task or ''} (last {min(len(logs), 10)} lines):")
        lines += [f"    {line}" for line in list(logs)[-10:]]
    if error:
        lines.append(f"  error: {error}")
    jid = job.get("id")
    lines.append(f"  reattach: %mlp_job {jid} · logs: %mlp_logs {jid} · cancel: %mlp_cancel {jid}")
    return "\n".join(lines)


def header_html(job: Mapping[str, Any] | None, spec: Mapping[str, Any] | None = None) -> str:
    if job is None:
        return (f"<b>{esc(str((spec or {}).get('name', 'job')))}</b> "
                f"{badge('not submitted')}")
    when = job.get("started_at") or job.get("created_at") or ""
    return (f"<b>{esc(str(job.get('name')))}</b> · job {job.get('id')} {badge(job.get('state'))}"
            f" <span style='color:#57606a'>{esc(job.get('reason') or '')}</span>"
            f"<br><span style='color:#57606a;font-size:85%'>"
            f"{esc(fmt_params((job.get('spec') or {}).get('params')))} {esc(when[:19])}</span>")


def placement_html(job: Mapping[str, Any] | None) -> str:
    """Queue place, score and blocking reasons of a queued job; what an admitted job holds."""
    lines = placement_lines(job)
    if not lines:
        return ""
    if (job or {}).get("state") == "Queued":
        style = "background:#fff8c5;padding:4px 8px;border-radius:4px"
    elif ((job or {}).get("reservation") or {}).get("preemptible"):
        style = "background:#fff1e5;padding:4px 8px;border-radius:4px;color:#953800"
    else:
        style = "color:#57606a;font-size:85%"
    return f"<div style='{style}'>" + "<br>".join(esc(line) for line in lines) + "</div>"


def error_html(error: str | None) -> str:
    if not error:
        return ""
    return (f"<div style='color:#cf222e;white-space:pre-wrap;font-family:monospace'>"
            f"{esc(error)}</div>")


def logs_html(logs: Sequence[str], height: int = 220) -> str:
    body = esc("\n".join(logs)) if logs else "<i>no output yet</i>"
    return (f"<pre style='max-height:{height}px;overflow:auto;background:#f6f8fa;margin:0;"
            f"padding:4px;font-size:85%;display:flex;flex-direction:column-reverse'>"
            f"<span>{body}</span></pre>")


def values_html(metrics: Mapping[str, Any] | None, job: Mapping[str, Any] | None) -> str:
    step, values = latest_metrics(metrics)
    if step is None:
        return "<span style='color:#888'>no metrics reported yet</span>"
    total = total_steps(job, metrics)
    head = f"step <b>{fmt_number(step)}</b>{' / ' + fmt_number(total) if total else ''}"
    return head + " · " + " · ".join(f"{esc(k)} <b>{fmt_number(v)}</b>"
                                     for k, v in values.items())


def job_html(
    job: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None = None,
    logs: Sequence[str] = (),
    error: str | None = None,
    spec: Mapping[str, Any] | None = None,
) -> str:
    parts = [header_html(job, spec), error_html(error)]
    if job is not None:
        parts.append(placement_html(job))
        parts.append(f"<div>{values_html(metrics, job)}</div>")
        parts += [metric_chart(metrics, name, width=320, height=160)
                  for name in metric_names(metrics)[:4]]
        if logs:
            parts.append(logs_html(list(logs)[-20:], height=160))
    return "<div class='mlp-job'>" + "".join(p for p in parts if p) + "</div>"


# ------------------------------------------------------------------------- tables
def table_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt_number(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in cells]
    return "\n".join(line.rstrip() for line in out)


def table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]],
               raw_columns: Iterable[int] = ()) -> str:
    raw = set(raw_columns)
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f"<td style='padding:2px 8px'>"
            f"{c if i in raw else esc(c if isinstance(c, str) else fmt_number(c))}</td>"
            for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table class='mlp-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ago(iso_time: str | None) -> str:
    if not iso_time:
        return ""
    try:
        seconds = time.time() - datetime.fromisoformat(iso_time).timestamp()
    except ValueError:
        return iso_time
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(max(seconds, 0))}s ago"
