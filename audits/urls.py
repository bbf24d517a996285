"""The environment variable that names the database.

Kept apart from the store, which loads SQLAlchemy, pandas and numpy: the command line declares
it on `--db` when it starts, and `recaudit --help` must answer without loading them.
"""

URL_ENV = "RECAUDIT_DATABASE_URL"
