"""Alembic environment for the mlp store (run through mlp.store.migrate)."""

from alembic import context
from sqlalchemy import create_engine

from mlp.store import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
