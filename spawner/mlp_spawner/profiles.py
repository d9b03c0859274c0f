"""Server sizes (`profile_list`) and the spawn form that offers them, bounded by what the user may
still reserve. Pure functions: the spawner does the I/O."""

from __future__ import annotations

import html
from typing import Any

from mlp.scheduling.resources import parse_cpu, parse_memory


def check_profiles(profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not profiles:
        raise ValueError("LocalMLPSpawner.profile_list is empty; offer at least one size")
    slugs = set()
    for i, p in enumerate(profiles):
        where = f"LocalMLPSpawner.profile_list[{i}]"
        if not isinstance(p.get("slug"), str) or not p["slug"]:
            raise ValueError(f"{where}: needs a 'slug'")
        if p["slug"] in slugs:
            raise ValueError(f"{where}: slug {p['slug']!r} is used twice")
        slugs.add(p["slug"])
        res = p.get("resources")
        if not isinstance(res, dict) or not ({"cpu", "memory"} & set(res)):
            raise ValueError(f"{where}: needs 'resources' with cpu and/or memory")
        if "cpu" in res:
            parse_cpu(res["cpu"])
        if "memory" in res:
            parse_memory(res["memory"])
        p.setdefault("display_name", p["slug"])
    return profiles


def headroom_note(quota: dict[str, Any], pool: str = "default") -> dict[str, float] | None:
    """What the user may still reserve in `pool` of their first group: per resource the
    smaller of the group's free quota and their personal cap's rest."""
    groups = quota.get("groups") or {}
    if not groups:
        return None
    g = groups[sorted(groups)[0]]
    p = (g.get("pools") or {}).get(pool)
    if p is None:
        return None
    room: dict[str, float] = {}
    for res in ("cpu", "memory"):
        limit = (p.get("limit") or {}).get(res)
        if limit is not None:
            room[res] = float(limit) - float((p.get("used_by_group") or {}).get(res, 0))
        cap = (g.get("personal_cap") or {}).get(res)
        if cap is not None:
            mine = float(cap) - float((g.get("my_usage") or {}).get(res, 0))
            room[res] = min(room.get(res, mine), mine)
    return room


def fits(profile: dict[str, Any], room: dict[str, float] | None) -> bool:
    if room is None:
        return True
    res = profile["resources"]
    need = {"cpu": parse_cpu(res["cpu"]) if "cpu" in res else 0.0,
            "memory": float(parse_memory(res["memory"])) if "memory" in res else 0.0}
    return all(need[r] <= room[r] + 1e-9 for r in need if r in room)


def _fmt(res: str, value: float) -> str:
    if res == "memory":
        return f"{value / 2**30:.3g}Gi"
    return f"{value:.3g}"


def render_form(profiles: list[dict[str, Any]], room: dict[str, float] | None) -> str:
    rows = []
    usable = [p["slug"] for p in profiles if fits(p, room)]
    default = next((p["slug"] for p in profiles if p.get("default") and p["slug"] in usable),
                   usable[0] if usable else None)
    for p in profiles:
        ok = p["slug"] in usable
        checked = p["slug"] == default
        rows.append(
            f'<div class="radio"><label><input type="radio" name="profile" '
            f'value="{html.escape(p["slug"])}"{" checked" if checked else ""}'
            f'{"" if ok else " disabled"}> {html.escape(p["display_name"])}'
            f'{"" if ok else " (more than you may still reserve)"}</label></div>'
        )
    if room is None:
        note = "Your free quota is not known right now; the reservation decides."
    else:
        note = "You may still reserve: " + ", ".join(
            f"{r} {_fmt(r, max(0.0, v))}" for r, v in sorted(room.items())
        )
    return f'<p class="mlp-headroom">{html.escape(note)}</p>' + "\n".join(rows)
