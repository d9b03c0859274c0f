"""The lifecycle every dashboard shares: submit or attach, refresh from the REST client, follow
with a `Poller`, build and render the widget, show text/HTML without a widget frontend, close.

A dashboard keeps what the service reported and renders everything from there, so `%mlp_job ID`
in a new kernel shows what the cell that submitted the job showed. A subclass says what one
refresh fetches (`_fetch`: requests only, it runs off the kernel's loop), how an answer changes
its state (`_apply`), when it has `ended`, and how it looks (`_build`, `_render_ui`, `text`,
`html`).

Answers are numbered when their requests start: an answer older than the one shown (a poll
that was in flight while `wait()` polled in the cell, or while a cancel answered) is dropped,
so the state never goes back in time.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any, Self

import ipywidgets as w

from mlp_magics.client import MagicsClient, MLPError, describe_error
from mlp_magics.poller import Poller

__all__ = ["MAX_CHART_POINTS", "Dashboard"]

MAX_CHART_POINTS = 300


class Dashboard(ABC):
    """Base of the job and batch dashboards."""

    def __init__(self, client: MagicsClient, *, interval: float, max_interval: float):
        self.client = client
        self.error: str | None = None
        self.retryable = False
        self.interval = interval
        self.max_interval = max_interval
        self.closed = False
        self._lock = threading.RLock()
        self._poller: Poller[tuple[int, Any]] | None = None
        self._ui: dict[str, Any] | None = None
        self._answers = 0  # numbers handed to refreshes, in the order their requests start
        self._shown = 0  # number of the newest answer applied

    # ------------------------------------------------------------------ to implement
    @property
    @abstractmethod
    def ended(self) -> bool:
        """Nothing left to follow: polling stops."""

    @abstractmethod
    def submit(self) -> bool:
        """Send what was given to submit; False when the service could not be reached."""

    @abstractmethod
    def _needs_submit(self) -> bool: ...

    @abstractmethod
    def _fetch(self) -> Any:
        """One refresh's requests; touches no state (it runs off the kernel's loop)."""

    @abstractmethod
    def _apply(self, answer: Any) -> bool:
        """Take an answer of `_fetch` into the state (under the lock); True if anything
        changed."""

    @abstractmethod
    def _poller_name(self) -> str: ...

    @abstractmethod
    def _build(self) -> dict[str, Any]:
        """The widgets, wired to this dashboard; `box` is the whole of it."""

    @abstractmethod
    def _render_ui(self, ui: dict[str, Any]) -> None:
        """Set the widgets' values from the state."""

    @abstractmethod
    def text(self) -> str: ...

    @abstractmethod
    def html(self) -> str: ...

    def _retry_note(self) -> str:
        """Appended to a retryable error (e.g. that polling goes on by itself)."""
        return ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Submit (if given something to submit), load the current state, then follow."""
        if self._needs_submit() and not self.submit():
            return self
        try:
            self.refresh()
        except MLPError as e:
            self._set_error(e)
        self._follow()
        return self

    def refresh(self) -> bool:
        """Fetch once and show it (in the calling thread); True if anything changed."""
        return self._apply_answer(self._fetch_answer())

    def retry(self) -> None:
        """After a failed submission, or while the service was unreachable."""
        with self._lock:
            self.error = None
        self.start()

    def stop(self) -> None:
        """Stop following (the job goes on; `start()` or `retry()` follows it again)."""
        if self._poller is not None:
            self._poller.stop()

    def close(self) -> None:
        """Stop following and close the widgets (their comms). Called when the widget is closed
        in the kernel (`dash.widget.close()`) or by the frontend (comm close). The text and HTML
        views keep working."""
        if self.closed:
            return
        self.closed = True
        self.stop()
        ui, self._ui = self._ui, None
        if ui is not None:
            _close_tree(ui["box"])

    def _wait(self, timeout: float | None = None) -> None:
        """Block until polling ends (what was followed ended), or `timeout`. In a cell, the
        kernel's loop waits for this cell, so the polling happens here, in the cell."""
        poller = self._poller
        if poller is None or not poller.running:
            return
        if poller.on_callers_loop():
            poller.run_here(timeout)
        else:
            poller.join(timeout)

    def _follow(self) -> None:
        if self.closed or self.ended or (self._poller is not None and self._poller.running):
            return
        self._poller = Poller(self._fetch_answer, self._apply_polled, on_error=self._set_error,
                              interval=self.interval, max_interval=self.max_interval,
                              name=self._poller_name())
        self._poller.start()

    # ------------------------------------------------------------------ answers
    def _fetch_answer(self) -> tuple[int, Any]:
        with self._lock:
            self._answers += 1
            number = self._answers
        return number, self._fetch()

    def _apply_answer(self, numbered: tuple[int, Any]) -> bool:
        number, answer = numbered
        with self._lock:
            if number < self._shown:  # older than what is shown
                return False
            self._shown = number
            changed = self._apply(answer)
        self._render()
        return changed

    def _apply_polled(self, numbered: tuple[int, Any]) -> tuple[bool, bool]:
        return self._apply_answer(numbered), self.ended

    def _newest(self) -> None:
        """What the caller applies now (a cancel's or a submission's answer) is newer than any
        answer still in flight; call under the lock."""
        self._answers += 1
        self._shown = self._answers

    def _set_error(self, e: MLPError | Exception) -> None:
        with self._lock:
            if isinstance(e, MLPError):
                self.error = describe_error(e)
                self.retryable = e.status == 0 or e.status >= 500
                if self.retryable:
                    self.error += self._retry_note()
            else:
                self.error = f"dashboard update failed: {e.__class__.__name__}: {e}"
                self.retryable = True
        self._render()

    # ------------------------------------------------------------------ widgets
    @property
    def widget(self) -> w.VBox:
        """The live widget (built on first use). Closing it stops the dashboard."""
        if self._ui is None:
            if self.closed:
                raise RuntimeError("this dashboard was closed; %mlp_job ID or %mlp_compare "
                                   "opens a new one")
            self._ui = self._build()
            box = self._ui["box"]
            box.observe(self._on_comm, names="comm")
            self._watch_comm(box.comm)
            self._render()
        box_: w.VBox = self._ui["box"]
        return box_

    def _on_comm(self, change: dict[str, Any]) -> None:
        if change["new"] is None:  # Widget.close()
            self.close()
        else:
            self._watch_comm(change["new"])

    def _watch_comm(self, comm: Any) -> None:
        # The frontend closing the comm does not go through Widget.close().
        if comm is not None and hasattr(comm, "on_close"):
            comm.on_close(lambda _msg: self.close())

    def _render(self) -> None:
        ui = self._ui
        if ui is None or self.closed:
            return
        self._render_ui(ui)

    # ------------------------------------------------------------------ representations
    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if not self.closed:
            data.update(self.widget._repr_mimebundle_() or {})
        data["text/plain"] = self.text()
        data["text/html"] = self.html()
        return data


def _close_tree(widget: w.Widget) -> None:
    """Close a widget with everything it holds (children, layout, style): each is a comm."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, w.Widget):
            part.close()
    widget.close()
