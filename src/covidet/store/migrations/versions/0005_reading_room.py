"""reading room: addenda of signed reviews, and claims of studies ("being read by")

Revision ID: 0005_reading_room
Revises: 0004_dicom_archive
Create Date: 2026-12-03 11:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_reading_room"
down_revision = "0004_dicom_archive"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("amends_review_id", sa.Integer(), nullable=True))
        batch.create_index("ix_reviews_amends_review_id", ["amends_review_id"])
        batch.create_foreign_key(
            "fk_reviews_amends_review_id_reviews", "reviews", ["amends_review_id"], ["id"]
        )
    op.create_table(
        "study_claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], name=op.f("fk_study_claims_study_id_studies")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_study_claims_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_claims")),
        sa.UniqueConstraint("study_id", name=op.f("uq_study_claims_study_id")),
    )
    op.create_index("ix_study_claims_user_id", "study_claims", ["user_id"])


def downgrade() -> None:
    op.drop_table("study_claims")
    with op.batch_alter_table("reviews") as batch:
        batch.drop_constraint("fk_reviews_amends_review_id_reviews", type_="foreignkey")
        batch.drop_index("ix_reviews_amends_review_id")
        batch.drop_column("amends_review_id")
