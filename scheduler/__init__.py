"""The runtime: the `recaudit` command, and (later) the scheduled service and its HTTP endpoints."""
