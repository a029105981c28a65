"""Alembic environment of the knowledge store: runs on the connection the store hands over
(``config.attributes["connection"]``), or on ``sqlalchemy.url`` when run from the command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from core.knowledge.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
