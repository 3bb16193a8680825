"""Holds: a whole definition or concurrency key paused at once (a deploy, an outage
downstream), set and released by people (`manage.py workflow pause --definition KEY`,
the admin).

A hold works through the per-workflow pause: it pauses each workflow it covers that may
be paused, each under its own lock with its own audit row (as `workflow_pause` does), and
marks it with its label (`Workflow.held_by`, e.g. `definition:billing`). So the claim
needs nothing new, and releasing a hold resumes exactly the workflows it paused: never
one a person paused on their own, nor one a person resumed since.

New workflows of a held definition or key start paused (services.create). A workflow
written at the moment its hold is set or released can slip past either; recovery closes
both (`sweep_targets`, `orphans`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Exists, OuterRef

from .. import values
from ..models import PAUSABLE_STATES, TERMINAL_STATES, Actor, Hold, Transition, Workflow, hold_text
from ..registry import UnknownDefinition, get_definition
from .exceptions import AuditBroken, HoldNotFound
from .transitions import changing, check_reason, pause_in_place, resume_in_place

logger = logging.getLogger("workflow_orchestrator.services")

# Workflows read at once while a hold is set or released: each is then paused or resumed
# in a transaction of its own, so that 10,000 of them hold no lock for long.
BATCH = 500


@dataclass
class Held:
    """What hold_set did. Its workflows are paused once the caller's transaction commits (at
    once outside one): `paused` counts them then, and is None until then."""

    hold: Hold
    created: bool  # False: it was held already, and nothing changed
    paused: int | None = None


@dataclass
class Released:
    """What hold_release did; its counts are filled in as for Held."""

    hold: Hold
    resumed: int | None = None  # workflows it had paused, resumed
    still_held: int | None = None  # those another hold covers too: they stay paused, by that one


def check_hold(kind, value) -> None:
    """ValidationError naming each bad field of a hold to set: a definition must be
    registered (a mistyped one would hold nothing); a key is any key."""
    errors = {}
    if kind not in Hold.Kind.values:
        errors["kind"] = [f"kind must be one of {', '.join(Hold.Kind.values)}"]
    longest = Hold._meta.get_field("value").max_length
    if not isinstance(value, str) or not value or len(value) > longest:
        errors["value"] = [f"value is required: a string of at most {longest} characters"]
    elif problem := values.text_problem(value):
        errors["value"] = [f"value {problem}"]
    elif kind == Hold.Kind.DEFINITION and "@" in value:
        errors["value"] = ["a hold covers every version of a definition: give its key alone, without @version"]
    elif kind == Hold.Kind.DEFINITION:
        try:
            get_definition(value)
        except UnknownDefinition as exc:
            errors["value"] = [str(exc.args[0])]
    if errors:
        raise ValidationError(errors)


def hold_reason(hold: Hold) -> str:
    """The reason in the audit row of each workflow the hold pauses."""
    return f"{hold} held" + (f": {hold.reason}" if hold.reason else "")


def hold_set(kind: str, value: str, *, actor: Actor, reason: str = "") -> Held:
    """Hold a definition or a concurrency key: the workflows of it created from now on
    start paused, and every one of it that may be paused now (INIT or running, not paused
    already) is paused, as `actor`, once the caller's transaction commits (at once
    outside one), each in a transaction of its own. Holding what is held already changes
    nothing."""
    check_hold(kind, value)
    check_reason(reason)
    fields = {"reason": reason, "created_by": actor.user, "actor_label": actor.label}
    hold, created = Hold.objects.get_or_create(kind=kind, value=value, defaults=fields)
    held = Held(hold, created, None if created else 0)
    if created:
        logger.info("%s held by %s", hold, actor.label)
        transaction.on_commit(lambda: _hold_all(held, actor))
    return held


def _hold_all(held: Held, actor: Actor) -> None:
    workflows = _each(unheld(held.hold))
    held.paused = sum(_unless_broken(hold_workflow, workflow_id, held.hold, actor) or 0 for workflow_id in workflows)


def hold_release(kind: str, value: str, *, actor: Actor, reason: str = "") -> Released:
    """Release a hold: the workflows it paused are resumed, as `actor`, but for those
    another hold covers too (they stay paused, by that hold), once the caller's
    transaction commits (at once outside one), each in a transaction of its own.
    HoldNotFound when it is not held."""
    if kind not in Hold.Kind.values:
        raise ValidationError({"kind": [f"kind must be one of {', '.join(Hold.Kind.values)}"]})
    check_reason(reason)
    # A value the database cannot hold (a NUL, a lone surrogate) names no hold, and the
    # database need not be asked.
    hold = None if values.text_problem(value) else Hold.objects.filter(kind=kind, value=value).first()
    deleted = hold and Hold.objects.filter(pk=hold.pk).delete()[0]
    if not deleted:  # never held, or released meanwhile by someone else
        raise HoldNotFound(kind, value)
    logger.info("%s released by %s", hold, actor.label)
    released = Released(hold)
    text = released_reason(hold.label) + (f": {reason}" if reason else "")
    transaction.on_commit(lambda: _release_all(released, actor, text))
    return released


def _release_all(released: Released, actor: Actor, reason: str) -> None:
    label = released.hold.label
    outcomes = Counter(
        _unless_broken(release_workflow, workflow_id, label, actor, reason)
        for workflow_id in _each(Workflow.objects.filter(held_by=label))
    )
    released.resumed, released.still_held = outcomes["resumed"], outcomes["held"]


def hold_new(workflow: Workflow, hold: Hold) -> None:
    """Pause a workflow that `hold` covers as it is created, in the transaction that
    inserts it: by `system`, naming the hold."""
    pause_in_place(workflow, Actor.SYSTEM, hold_reason(hold), held_by=hold.label)


def _each(workflows) -> Iterator:
    for ids in batches(workflows):
        yield from ids


def _unless_broken(step, workflow_id, *args):
    """`step(workflow_id, *args)`; None when the workflow's audit chain does not verify (it
    is left as it is: `changing` reported it) or it was deleted meanwhile."""
    try:
        return step(workflow_id, *args)
    except (AuditBroken, Workflow.DoesNotExist):
        return None


def batches(workflows) -> Iterator[list]:
    """The ids of `workflows`, BATCH at a time in id order, each batch read afresh after
    the one before has been dealt with: no transaction, nor list, spans them all."""
    workflows = workflows.order_by("pk")
    after = None
    while True:
        page = workflows if after is None else workflows.filter(pk__gt=after)
        ids = list(page.values_list("pk", flat=True)[:BATCH])
        if not ids:
            return
        yield ids
        after = ids[-1]


def unheld(hold: Hold):
    """The workflows `hold` covers and would pause: INIT or running, not paused, and not
    resumed by someone since the hold was set (that was their choice)."""
    resumed = Transition.objects.filter(workflow=OuterRef("pk"), event="resume", created_at__gte=hold.created_at)
    return hold.workflows().filter(state__in=PAUSABLE_STATES, paused_at__isnull=True).exclude(Exists(resumed))


def hold_workflow(workflow_id, hold: Hold, actor: Actor) -> int:
    """Pause one workflow by `hold`, under its lock, if the hold would still pause it (see
    `unheld`) and is still there: 1 if it did, else 0. AuditBroken when its chain does not
    verify."""
    with changing(workflow_id, "pause") as workflow:
        if workflow.pause_refusal() or not unheld(hold).filter(pk=workflow.pk).exists():
            return 0
        if not Hold.objects.filter(pk=hold.pk).exists():  # released meanwhile
            return 0
        pause_in_place(workflow, actor, hold_reason(hold), held_by=hold.label)
    return 1


def release_workflow(workflow_id, label: str, actor: Actor, reason: str) -> str:
    """Under its lock, take the hold labelled `label` off one workflow it paused: resume it
    ("resumed"), or, when a hold covers it still (another one, or the same set again),
    keep it paused by that one ("held"). One that has ended for good is only no longer
    held (""). AuditBroken when its chain does not verify."""
    with changing(workflow_id, "resume") as workflow:
        if workflow.held_by != label:  # resumed, cancelled or released meanwhile
            return ""
        other = Hold.objects.covering(workflow.definition, workflow.concurrency_key).first()
        if workflow.resume_refusal() or other is not None:
            workflow.held_by = "" if workflow.resume_refusal() else other.label
            workflow.save(update_fields=["held_by"])
            return "held" if workflow.held_by else ""
        resume_in_place(workflow, actor, reason, held_by=label)
    return "resumed"


# --- Recovery's part --------------------------------------------------------------------------


def sweep_targets() -> Iterator[tuple[Hold, list]]:
    """Each hold with the ids of the workflows it covers but did not pause, BATCH at a
    time: created while it was being set (their check found no hold, and hold_set's pass
    did not see them yet), or brought under it since (an INIT workflow given a held
    definition). Recovery pauses them with hold_workflow."""
    for hold in Hold.objects.all():
        for ids in batches(unheld(hold)):
            yield hold, ids


def orphans():
    """Workflows paused by a hold that is no longer there: paused at the moment it was
    released, after its release had looked. Recovery resumes them with release_workflow."""
    labels = [hold.label for hold in Hold.objects.all()]
    return Workflow.objects.filter(held_by__gt="").exclude(held_by__in=labels)


def released_reason(label: str) -> str:
    return f"{hold_text(label)} released"


def held_counts(holds) -> dict[str, int]:
    """How many workflows each of `holds` keeps paused now (those that have not ended), by
    label: one query, on the index of held workflows."""
    labels = [hold.label for hold in holds]
    rows = (
        Workflow.objects.filter(held_by__in=labels, paused_at__isnull=False)
        .exclude(state__in=TERMINAL_STATES)
        .order_by()
        .values_list("held_by")
        .annotate(count=Count("pk"))
    )
    counts = dict(rows)
    return {label: counts.get(label, 0) for label in labels}
