"""analysis: inferences, findings, triage, alerts; image priority

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 04:12:56.595219
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "inferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("decision_rule", sa.String(length=64), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("label", sa.String(length=16), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=True),
        sa.Column("read_seconds", sa.Float(), nullable=True),
        sa.Column("detect_seconds", sa.Float(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_inferences_image_id_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inferences")),
        sa.UniqueConstraint("image_id", "model_name", "model_version", name="uq_inferences_image_model"),
    )
    with op.batch_alter_table("inferences", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inferences_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_inferences_status"), ["status"], unique=False)

    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("inference_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
        sa.Column("x2", sa.Float(), nullable=False),
        sa.Column("y2", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["inference_id"], ["inferences.id"], name=op.f("fk_findings_inference_id_inferences")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_findings")),
    )
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_findings_inference_id"), ["inference_id"], unique=False)

    op.create_table(
        "triage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("inference_id", sa.Integer(), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("news2_partial", sa.Integer(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("vital_sign_ids", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_triage_image_id_images")),
        sa.ForeignKeyConstraint(
            ["inference_id"], ["inferences.id"], name=op.f("fk_triage_inference_id_inferences")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triage")),
    )
    with op.batch_alter_table("triage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_triage_computed_at"), ["computed_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_triage_image_id"), ["image_id"], unique=False)

    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("triage_id", sa.Integer(), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_alerts_image_id_images")),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_alerts_patient_id_patients")),
        sa.ForeignKeyConstraint(["triage_id"], ["triage.id"], name=op.f("fk_alerts_triage_id_triage")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_patient_id"), ["patient_id"], unique=False)

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("priority_updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_images_priority"), ["priority"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_priority"))
        batch_op.drop_column("priority_updated_at")
        batch_op.drop_column("priority")

    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_patient_id"))
        batch_op.drop_index(batch_op.f("ix_alerts_image_id"))
        batch_op.drop_index(batch_op.f("ix_alerts_created_at"))

    op.drop_table("alerts")
    with op.batch_alter_table("triage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_triage_image_id"))
        batch_op.drop_index(batch_op.f("ix_triage_computed_at"))

    op.drop_table("triage")
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_findings_inference_id"))

    op.drop_table("findings")
    with op.batch_alter_table("inferences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inferences_status"))
        batch_op.drop_index(batch_op.f("ix_inferences_image_id"))

    op.drop_table("inferences")
