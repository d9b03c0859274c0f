"""jupyterhub-mlp's platform core: job model, store, backends, REST API and the `mlp` CLI."""

__version__ = "0.1.0"
