"""Signals the engine sends.

`workflow_transitioned` (sender: `Workflow`; arguments `workflow` and `transition`) is sent
once per state change, after the transaction that made it commits: never for a change
that was rolled back, or that lost a race and was not written.

- `transition` is the audit row (`Transition`) as it was written, id included.
- `workflow` is the workflow as the change left it. Where a worker moved it on (the hot
  path reads no more of the row than the change needs), the fields it did not read are
  deferred: reading one (its `name`, `input`, ...) loads it with a query, in the receiver.

`workflow_deleting` (sender: `Workflow`; argument `workflow`) is sent as a workflow is about
to be deleted, inside the deleting transaction, while its tasks and audit rows still exist:
a receiver may read them, and an exception it raises rolls the deletion back.

`workflows_deleting` (sender: `Workflow`; argument `workflows`, a list) is sent once per
deleting transaction, before the `workflow_deleting` of each: a deletion by hand deletes
one workflow, a retention batch (`services.retention`) up to 500. The metrics count the
history of them all at once (a counter row updated 500 times in one transaction grows
slower with each update).

`workflow_waiting` (sender: `Workflow`; arguments `workflow` and `task`) is sent once an
`approval` task's wait for decisions is committed: a receiver tells its approvers (a mail,
a chat message) who may decide it (`task.params["approvers"]`) on the admin's "Waiting for
me" page or through `POST /workflows/{id}/tasks/{name}/decide`.

Receivers of `workflow_transitioned` run in the process that made the change: a web server's, the CLI's or a
worker's. An exception in a receiver is logged and does not reach the engine.
"""

import logging

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)

workflow_transitioned = Signal()
workflow_deleting = Signal()
workflows_deleting = Signal()
# An approval task started waiting for decisions (sender: Workflow; workflow, task), sent
# once that is committed: tell its approvers.
workflow_waiting = Signal()


def send_transitioned_on_commit(workflow, transition) -> None:
    """Send `workflow_transitioned` for `transition` once the current transaction commits
    (at once outside a transaction)."""
    transaction.on_commit(lambda: _send(workflow, transition))


def _send(workflow, transition) -> None:
    if not workflow_transitioned.receivers:
        return
    for receiver, result in workflow_transitioned.send_robust(
        sender=type(workflow), workflow=workflow, transition=transition
    ):
        if isinstance(result, Exception):
            logger.error(
                "receiver %r of workflow_transitioned failed for workflow %s #%s",
                receiver,
                workflow.pk,
                transition.seq,
                exc_info=result,
            )
