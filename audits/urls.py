"""The environment variables that name the database, the lake and its engine.

Kept apart from the store, which loads SQLAlchemy, pandas and numpy: the command line declares
it on `--db` when it starts, and `recaudit --help` must answer without loading them.
"""

URL_ENV = "RECAUDIT_DATABASE_URL"
LAKE_ENV = "RECAUDIT_LAKE"
ENGINE_ENV = "RECAUDIT_ENGINE"
ENGINES = ("duckdb", "spark")
