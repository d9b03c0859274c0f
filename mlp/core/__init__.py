"""The platform core: job spec, state machine, manager, quota service, alerts, metrics
storage and per-user paths. Nothing here imports from `mlp.api`."""
