"""Alembic's environment: revisions run on the connection that recaudit.audits.migrations passes
in through the config's attributes, inside the transaction that holds the schema lock."""

from alembic import context

from recaudit.audits.schema import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
