"""One backend per database for the hot path's statements, chosen once per connection
alias by the connection's vendor (see base.Backend for the interface)."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections

from .base import Backend
from .postgresql import PostgreSQLBackend
from .sqlite import SQLiteBackend

BACKENDS: dict[str, type[Backend]] = {"postgresql": PostgreSQLBackend, "sqlite": SQLiteBackend}
_chosen: dict[str, Backend] = {}


def get_backend(alias: str = DEFAULT_DB_ALIAS) -> Backend:
    """The backend of the database `alias`, made on first use."""
    backend = _chosen.get(alias)
    if backend is None:
        vendor = connections[alias].vendor
        if vendor not in BACKENDS:
            raise ImproperlyConfigured(f"the orchestrator runs on {' or '.join(BACKENDS)}, not {vendor} ({alias!r})")
        backend = _chosen[alias] = BACKENDS[vendor](alias)
    return backend
