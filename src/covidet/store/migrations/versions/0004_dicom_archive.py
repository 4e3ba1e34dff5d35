"""DICOM archive: series UIDs of images, and the DICOM objects covidet makes (AI and review SRs)

Revision ID: 0004_dicom_archive
Revises: 0003
Create Date: 2026-12-03 11:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_dicom_archive"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("series_instance_uid", sa.String(length=64), nullable=True))
        batch.create_index("ix_images_series_instance_uid", ["series_instance_uid"])
    op.create_table(
        "dicom_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("inference_id", sa.Integer(), nullable=True),
        sa.Column("review_id", sa.Integer(), nullable=True),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], name=op.f("fk_dicom_objects_study_id_studies")),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_dicom_objects_image_id_images")),
        sa.ForeignKeyConstraint(
            ["inference_id"], ["inferences.id"], name=op.f("fk_dicom_objects_inference_id_inferences")
        ),
        sa.ForeignKeyConstraint(
            ["review_id"], ["reviews.id"], name=op.f("fk_dicom_objects_review_id_reviews")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dicom_objects")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_dicom_objects_sop_instance_uid")),
        sa.UniqueConstraint("inference_id", name=op.f("uq_dicom_objects_inference_id")),
        sa.UniqueConstraint("review_id", name=op.f("uq_dicom_objects_review_id")),
    )
    op.create_index("ix_dicom_objects_series_instance_uid", "dicom_objects", ["series_instance_uid"])
    op.create_index("ix_dicom_objects_study_id", "dicom_objects", ["study_id"])
    op.create_index("ix_dicom_objects_image_id", "dicom_objects", ["image_id"])
    op.create_index("ix_dicom_objects_created_at", "dicom_objects", ["created_at"])


def downgrade() -> None:
    op.drop_table("dicom_objects")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_series_instance_uid")
        batch.drop_column("series_instance_uid")
