"""Concurrency keys' limits: set, changed and removed by people (the admin, `manage.py
workflow limit`); checked and taken by the claim, given back by the database (see
models.ConcurrencyLimit and the claim in sql/*.sql)."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F

from .. import queue, values
from ..models import ConcurrencyLimit, Task

logger = logging.getLogger("workflow_orchestrator.services")
Status = Task.Status

# Deliveries sent at most at once when a limit is raised or removed: each runs tasks in a
# row (the claim hands on), and the tasks' own deliveries follow.
WAKE_AT_MOST = 100
# The largest count a limit holds: PostgreSQL's integer (SQLite would take more, and
# Python's ints are unbounded; the database must not be the one to refuse it).
MAX_COUNT = 2_147_483_647


def check_limit(key, max_running=None, rate=None, per_seconds=None) -> None:
    """ValidationError naming each bad field."""
    errors = {}
    longest = ConcurrencyLimit._meta.get_field("key").max_length
    if not isinstance(key, str) or not key or len(key) > longest:
        errors["key"] = [f"key is required: a string of at most {longest} characters"]
    elif problem := values.text_problem(key):
        errors["key"] = [f"key {problem}"]
    if max_running is not None and not _is_count(max_running):
        errors["max_running"] = [f"max_running must be a whole number from 1 to {MAX_COUNT}"]
    if rate is not None and not _is_count(rate):
        errors["rate"] = [f"rate must be a whole number from 1 to {MAX_COUNT}"]
    if rate is not None and (
        isinstance(per_seconds, bool) or not isinstance(per_seconds, int | float) or not 0 < per_seconds <= 86400
    ):
        errors["per_seconds"] = ["a rate needs per_seconds: a number of seconds above 0, at most 86400"]
    if rate is None and per_seconds is not None:
        errors["rate"] = ["per_seconds needs a rate"]
    if max_running is None and rate is None and not errors:
        errors["max_running"] = ["give max_running, a rate, or both"]
    if errors:
        raise ValidationError(errors)


def _is_count(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= MAX_COUNT


def limit_set(key: str, *, max_running: int | None = None, rate: int | None = None, per_seconds=None):
    """Set the limits of `key` (replacing any it had); returns (the limit, created).

    Tasks of the key already RUNNING count against a new limit at once. Raising a limit
    wakes deliveries for the tasks it now lets start."""
    check_limit(key, max_running, rate, per_seconds)
    fields = {"max_running": max_running, "rate": rate, "per_seconds": float(per_seconds) if rate else None}
    with transaction.atomic():
        limit, created = ConcurrencyLimit.objects.select_for_update().get_or_create(key=key, defaults=fields)
        if not created:
            for name, value in fields.items():
                setattr(limit, name, value)
            limit.save(update_fields=[*fields, "updated_at"])
        _adopt(limit)
    transaction.on_commit(lambda: wake(key))
    return limit, created


def limit_remove(key: str) -> bool:
    """Remove the limits of `key`; False when it had none. Its waiting tasks may start."""
    with transaction.atomic():
        deleted, _ = ConcurrencyLimit.objects.filter(key=key).delete()
        # The key's running tasks hold no slot any more: a limit set again counts them.
        Task.objects.filter(status=Status.RUNNING, slot=key).update(slot="")
    if deleted:
        # After the commit (at once outside a transaction): a delivery sent inside the
        # admin's transaction could run before it and still find the limit.
        transaction.on_commit(lambda: wake(key))
    return bool(deleted)


def _adopt(limit: ConcurrencyLimit) -> int:
    """Count the key's RUNNING tasks that hold no slot of it (started before its limit was
    set) against the limit, under the limit row's lock."""
    adopted = Task.objects.filter(status=Status.RUNNING, concurrency_key=limit.key).exclude(slot=limit.key)
    count = adopted.update(slot=limit.key)
    if count:
        ConcurrencyLimit.objects.filter(pk=limit.pk).update(running=F("running") + count)
        limit.refresh_from_db(fields=["running"])
    return count


def adopt_running() -> int:
    """Recovery's part: RUNNING tasks of a limited key that hold no slot (claimed while
    its limit was being set) count against it from now on."""
    adopted = 0
    keys = Task.objects.filter(
        status=Status.RUNNING, slot="", concurrency_key__in=ConcurrencyLimit.objects.values("key")
    )
    for key in set(keys.values_list("concurrency_key", flat=True)):
        with transaction.atomic():
            limit = ConcurrencyLimit.objects.select_for_update().filter(key=key).first()
            if limit is not None:
                adopted += _adopt(limit)
    return adopted


def wake(key: str) -> int:
    """Send deliveries for tasks of `key` that may start now; returns how many."""
    limit = ConcurrencyLimit.objects.filter(key=key).first()
    ready = Task.objects.filter(status=Status.QUEUED, concurrency_key=key).count()
    free = ready if limit is None or limit.max_running is None else max(limit.max_running - limit.running, 0)
    count = min(ready, free, WAKE_AT_MOST)
    if count:
        queue.send(queue.deliveries(count))
    return count
