"""The service's small HTML page, for people who follow the hub's Services menu."""

from __future__ import annotations

import html
from typing import Any

from tornado import web

from mlp.api.base import BaseHandler


class HomeHandler(BaseHandler):
    @web.authenticated
    async def get(self) -> None:
        user: dict[str, Any] = self.current_user
        jobs = self.manager.store.list_jobs(user=user["name"], limit=50)
        rows = "".join(
            f"<tr><td>{j.id}</td><td>{html.escape(j.name)}</td><td>{j.state}</td>"
            f"<td>{html.escape(j.reason)}</td></tr>"
            for j in jobs
        )
        api = self.settings["api_prefix"]
        self.finish(
            "<!doctype html><title>mlp</title><h1>mlp: jobs of "
            + html.escape(user["name"])
            + "</h1><table border=1 cellpadding=4><tr><th>id</th><th>name</th><th>state</th>"
            f"<th>reason</th></tr>{rows}</table>"
            f"<p>REST API: <a href='{api}/openapi.json'>{api}/openapi.json</a></p>"
        )
