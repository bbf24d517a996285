"""Whether data still arrives: per event kind, the newest event stored and when an ingest last
stored one, and the conditions that hold when a kind has been silent too long.

Silence is measured in wall-clock time since an ingest last stored an event of the kind, not
from the events' own times: a log replayed from last month is fresh data, and a service whose
clock is off still has its arrivals judged. A kind never stored is not judged (a team may send
no recommendation events at all); it shows on /metrics with no value.
"""

from __future__ import annotations

import json

import pandas as pd
from sqlalchemy import select

from recaudit.audits import store as st

KINDS = {"watch": st.watches, "rate": st.ratings, "recommend": st.recommendations}  # kind in the log: its table
_BATCH = 500  # ingest records read at a time, newest first, until every kind's last arrival is found


def arrivals(store: st.Store) -> pd.DataFrame:
    """(kind, last_event, last_ingest) for each event kind: the time of its newest stored event
    and the wall-clock time an ingest last stored one (NaT when none has)."""
    last_ingest: dict[str, pd.Timestamp] = {}
    last_event = {kind: store.latest_time(table) for kind, table in KINDS.items()}
    with store.engine.connect() as conn:
        query = (select(st.ingested_sources.c.ingested_at, st.ingested_sources.c.stored)
                 .order_by(st.ingested_sources.c.ingested_at.desc(), st.ingested_sources.c.id.desc()))
        offset = 0
        while len(last_ingest) < len(KINDS):
            rows = conn.execute(query.limit(_BATCH).offset(offset)).all()
            for at, stored in rows:
                for kind, n in json.loads(stored).items():
                    if kind in KINDS and n > 0 and kind not in last_ingest:
                        last_ingest[kind] = pd.Timestamp(at)
            if len(rows) < _BATCH:
                break
            offset += _BATCH
    return pd.DataFrame({"kind": list(KINDS),
                         "last_event": [pd.NaT if last_event[k] is None else last_event[k]
                                        for k in KINDS],
                         "last_ingest": [last_ingest.get(k, pd.NaT) for k in KINDS]})


def silences(store: st.Store, now: pd.Timestamp) -> list[tuple[str, pd.Timedelta, pd.Timestamp]]:
    """(kind, silence, last ingest) of each kind stored at least once: how long before `now` an
    ingest last stored one."""
    return [(row.kind, now - row.last_ingest, row.last_ingest) for row in arrivals(store).itertuples()
            if not pd.isna(row.last_ingest)]


def spoken(span: pd.Timedelta) -> str:
    """A span in the largest whole units that tell it.

    >>> spoken(pd.Timedelta(minutes=75)), spoken(pd.Timedelta(hours=50)), spoken(pd.Timedelta(seconds=40))
    ('1 h 15 min', '2 d 2 h', '40 s')
    """
    seconds = int(span.total_seconds())
    days, hours, minutes = seconds // 86400, seconds % 86400 // 3600, seconds % 3600 // 60
    parts = [(days, "d"), (hours, "h"), (minutes, "min")] if seconds >= 60 else [(seconds, "s")]
    told = [f"{n} {unit}" for n, unit in parts if n]
    return " ".join(told[:2])
