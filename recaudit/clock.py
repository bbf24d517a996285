"""The one clock of recaudit: now, in UTC, as the naive timestamps the store keeps (every time
recaudit reads or writes is UTC; the database holds no zone)."""

from __future__ import annotations


def utc_now():
    """Now in UTC as a naive ``pandas.Timestamp``; ``utc_now().tz_localize("UTC")`` where a
    library wants an aware time (APScheduler)."""
    import pandas as pd  # here: `import recaudit` loads no pandas

    return pd.Timestamp.now("UTC").tz_localize(None)
