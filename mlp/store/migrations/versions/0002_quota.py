"""quota: job group/pool/priority, ledger holders, groups, pools, expansions, promotions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("group", sa.String(255), nullable=True))
        batch.add_column(sa.Column("pool", sa.String(63), nullable=True))
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "holders",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user", sa.String(255), nullable=False, index=True),
        sa.Column("group", sa.String(255), nullable=False),
        sa.Column("pool", sa.String(63), nullable=False),
        sa.Column("amount", sa.JSON(), nullable=False),
        sa.Column("borrowed", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("admitted_at", sa.Float(), nullable=False),
        sa.Column("until", sa.Float(), nullable=True),
    )
    for table, key in (("quota_groups", sa.String(255)), ("pools", sa.String(63))):
        op.create_table(
            table,
            sa.Column("name", key, primary_key=True),
            sa.Column("spec", sa.JSON(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.Column("updated_by", sa.String(255), nullable=False),
        )
    op.create_table(
        "expansions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("group", sa.String(255), nullable=False),
        sa.Column("pool", sa.String(63), nullable=False),
        sa.Column("amount", sa.JSON(), nullable=False),
        sa.Column("start", sa.Float(), nullable=False),
        sa.Column("expiry", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("granted_by", sa.String(255), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "promotions",
        sa.Column("user", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("promoted_by", sa.String(255), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    for table in ("promotions", "expansions", "pools", "quota_groups", "holders"):
        op.drop_table(table)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("priority")
        batch.drop_column("pool")
        batch.drop_column("group")
