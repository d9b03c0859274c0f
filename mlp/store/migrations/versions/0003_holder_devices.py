"""holder devices: the GPU devices the quota ledger allocated to each holder

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for rows written before devices were recorded: the ledger allocates them at start
    with op.batch_alter_table("holders") as batch:
        batch.add_column(sa.Column("devices", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("holders") as batch:
        batch.drop_column("devices")
