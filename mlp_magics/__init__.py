"""mlp_magics: launch and follow platform training jobs from notebooks.

In a notebook: `%load_ext mlp_magics`, then `%%mlp_train`, `%mlp_jobs`, `%mlp_job ID`,
`%mlp_quota`, `%mlp_logs ID`, `%mlp_cancel ID`, `%mlp_compare BATCH` (see docs/notebooks.md),
`%mlp_deploy MODEL[:VERSION]`, `%mlp_models` (docs/serving.md).
In training code: `mlp_magics.report(step=..., loss=...)`, `mlp_magics.params()` and
`mlp_magics.keras_callback()`, and `mlp_magics.register_model(name, "export")`. Importing
this package is cheap (no IPython, widgets or TensorFlow) so job scripts can use it.
"""

from __future__ import annotations

from typing import Any

from mlp_magics.report import keras_callback, params, report

__all__ = ["keras_callback", "load_ipython_extension", "params", "register_model", "report"]


def register_model(name: str, path: str = "export", **kwargs: Any) -> dict[str, Any]:
    """Register the SavedModel in `path` (in a job: its folder) as a new version of `name`."""
    from mlp_magics.serving import register_model as register

    return register(name, path, **kwargs)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab panel (`jupyter labextension develop mlp_magics` links it)."""
    return [{"src": "labextension", "dest": "jupyterhub-mlp"}]


def load_ipython_extension(ipython: Any) -> None:
    from mlp_magics.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from mlp_magics.magics import unload_ipython_extension as unload

    unload(ipython)
