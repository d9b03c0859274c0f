"""models: the model registry (models, versions) and deployments

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False, index=True),
        sa.Column("group", sa.String(255), nullable=True),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "model", sa.String(63), sa.ForeignKey("models.name", ondelete="CASCADE"),
            nullable=False, index=True,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False, server_default="none"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.UniqueConstraint("model", "version"),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "model", sa.String(63), sa.ForeignKey("models.name", ondelete="CASCADE"),
            nullable=False, index=True,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(255), nullable=False, index=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("group", sa.String(255), nullable=False),
        sa.Column("pool", sa.String(63), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("processes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    for table in ("deployments", "model_versions", "models"):
        op.drop_table(table)
