"""Configuration of the platform: jupyterhub_config.py for the embedded default."""
