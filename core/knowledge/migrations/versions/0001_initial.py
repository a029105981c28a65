"""The knowledge store's first schema: annotations and their history, dictionaries, lists,
explanations, and full-text search (SQLite FTS5 tables kept in sync by triggers; PostgreSQL
GIN indexes on the tsvector expressions the store searches with).

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

KEY = sa.String(128)
TIME = sa.DateTime()

# PostgreSQL: these expressions must match those of core.knowledge.search for the index to serve.
PG_ANNOTATION_TSV = "to_tsvector('english', label || ' ' || notes)"
PG_EXPLANATION_TSV = "to_tsvector('english', text)"

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE annotations_fts USING fts5(label, notes, content='annotations', "
    "content_rowid='id', tokenize='porter unicode61')",
    "CREATE VIRTUAL TABLE explanations_fts USING fts5(text, content='explanations', "
    "content_rowid='id', tokenize='porter unicode61')",
    """CREATE TRIGGER annotations_fts_ai AFTER INSERT ON annotations BEGIN
        INSERT INTO annotations_fts(rowid, label, notes) VALUES (new.id, new.label, new.notes);
    END""",
    """CREATE TRIGGER annotations_fts_ad AFTER DELETE ON annotations BEGIN
        INSERT INTO annotations_fts(annotations_fts, rowid, label, notes)
        VALUES ('delete', old.id, old.label, old.notes);
    END""",
    """CREATE TRIGGER annotations_fts_au AFTER UPDATE ON annotations BEGIN
        INSERT INTO annotations_fts(annotations_fts, rowid, label, notes)
        VALUES ('delete', old.id, old.label, old.notes);
        INSERT INTO annotations_fts(rowid, label, notes) VALUES (new.id, new.label, new.notes);
    END""",
    """CREATE TRIGGER explanations_fts_ai AFTER INSERT ON explanations BEGIN
        INSERT INTO explanations_fts(rowid, text) VALUES (new.id, new.text);
    END""",
    """CREATE TRIGGER explanations_fts_ad AFTER DELETE ON explanations BEGIN
        INSERT INTO explanations_fts(explanations_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
    END""",
    """CREATE TRIGGER explanations_fts_au AFTER UPDATE ON explanations BEGIN
        INSERT INTO explanations_fts(explanations_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
        INSERT INTO explanations_fts(rowid, text) VALUES (new.id, new.text);
    END""",
]


def upgrade() -> None:
    op.create_table(
        "dictionaries",
        sa.Column("key", KEY, primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dictionary_key", KEY, nullable=False),
        sa.Column("feature", sa.Integer(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("updated_by", sa.Text(), nullable=False),
        sa.UniqueConstraint("dictionary_key", "feature", name="uq_annotation_key"),
    )
    op.create_table(
        "annotation_history",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "annotation_id",
            sa.Integer(),
            sa.ForeignKey("annotations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.UniqueConstraint("annotation_id", "version", name="uq_history_version"),
    )
    op.create_index("ix_annotation_history_annotation_id", "annotation_history", ["annotation_id"])
    op.create_table(
        "lists",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("slug", sa.String(200), nullable=False, unique=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )
    op.create_table(
        "list_entries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "list_id", sa.Integer(), sa.ForeignKey("lists.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("dictionary_key", KEY, nullable=False),
        sa.Column("feature", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.UniqueConstraint("list_id", "dictionary_key", "feature", name="uq_list_entry"),
    )
    op.create_index("ix_list_entries_list_id", "list_entries", ["list_id"])
    op.create_table(
        "explanations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dictionary_key", KEY, nullable=False),
        sa.Column("feature", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("explainer", sa.Text(), nullable=False),
        sa.Column("prompt_version", sa.Text(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
    )
    op.create_index("ix_explanations_dictionary_key", "explanations", ["dictionary_key"])
    op.create_index("ix_explanations_feature", "explanations", ["dictionary_key", "feature"])

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in SQLITE_FTS:
            op.execute(statement)
    elif dialect == "postgresql":
        op.execute(
            f"CREATE INDEX ix_annotations_fts ON annotations USING gin ({PG_ANNOTATION_TSV})"
        )
        op.execute(
            f"CREATE INDEX ix_explanations_fts ON explanations USING gin ({PG_EXPLANATION_TSV})"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in ("annotations", "explanations"):
            for suffix in ("ai", "ad", "au"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_fts_{suffix}")
            op.execute(f"DROP TABLE IF EXISTS {table}_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_annotations_fts")
        op.execute("DROP INDEX IF EXISTS ix_explanations_fts")
    op.drop_table("explanations")
    op.drop_table("list_entries")
    op.drop_table("lists")
    op.drop_table("annotation_history")
    op.drop_table("annotations")
    op.drop_table("dictionaries")
