"""The audit log's tamper evidence, keyed with the project's SECRET_KEY: without the key
nobody can mend what an edit breaks.

- Each Transition row carries an HMAC over its content and the previous row's digest:
  editing, deleting or inserting a row breaks the chain.
- Each workflow row carries the chain's head (last seq and digest) and `head_mac`, an HMAC
  over its id, state and head: a removed tail, or a state changed without its row, no
  longer matches the head, and moving the head back does not match its MAC.
- The deletion log (WorkflowDeletion) is one chain of the same kind across all workflows,
  whose head (DeletionLogHead) is signed the same way.

Rows written before a SECRET_KEY rotation verify with the old key in SECRET_KEY_FALLBACKS.
"""

import hmac
import json
from dataclasses import dataclass

from django.conf import settings
from django.utils.crypto import salted_hmac

SALT = "workflows.audit.transition"
HEAD_SALT = "workflows.audit.head"
DELETION_SALT = "workflows.audit.deletion"
DELETION_HEAD_SALT = "workflows.audit.deletion-head"


def _canonical(content: dict) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)


def _mac(salt: str, content: dict, secret: str | None = None) -> str:
    return salted_hmac(salt, _canonical(content), secret=secret, algorithm="sha256").hexdigest()


def _signed(value: str, salt: str, content: dict) -> bool:
    """`value` is the MAC of `content` under the current key or a fallback."""
    return any(
        hmac.compare_digest(value, _mac(salt, content, secret))
        for secret in [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    )


def _content(row, previous_digest: str) -> dict:
    return {
        "workflow": str(row.workflow_id),
        "seq": row.seq,
        "source": row.source,
        "target": row.target,
        "event": row.event,
        "actor": row.actor_id,
        "actor_label": row.actor_label,
        "reason": row.reason,
        "data": row.data,
        "created_at": row.created_at.isoformat(),
        "previous": previous_digest,
    }


def digest(row, previous_digest: str, secret: str | None = None) -> str:
    return _mac(SALT, _content(row, previous_digest), secret)


def _head(workflow) -> dict:
    return {
        "workflow": str(workflow.pk),
        "state": workflow.state,
        "last_seq": workflow.last_seq,
        "last_digest": workflow.last_digest,
    }


def head_mac(workflow, secret: str | None = None) -> str:
    """The MAC of the workflow's id, state and chain head (last seq and digest)."""
    return _mac(HEAD_SALT, _head(workflow), secret)


def sign_head(workflow) -> None:
    """Sign the head the workflow has in memory; it is written with the head itself."""
    workflow.head_mac = head_mac(workflow)


@dataclass
class BrokenLink:
    workflow_id: str
    seq: int | None  # None: the head on the workflow row
    problem: str

    def __str__(self) -> str:
        where = "head" if self.seq is None else f"transition #{self.seq}"
        return f"workflow {self.workflow_id}: {where}: {self.problem}"


def verify(workflow, rows=None) -> BrokenLink | None:
    """The first broken link of the workflow's audit chain or of its head, or None when
    both are whole. `rows`: its transitions in seq order, if the caller has read them
    (otherwise they are read here)."""
    pk = str(workflow.pk)
    previous_digest, expected_seq, last = "", 1, None
    for row in workflow.transitions.order_by("seq") if rows is None else rows:
        if row.seq != expected_seq:
            return BrokenLink(pk, expected_seq, f"missing (found #{row.seq} next): a row was deleted")
        if not _signed(row.digest, SALT, _content(row, previous_digest)):
            return BrokenLink(pk, row.seq, "its digest does not match: the row was edited or inserted")
        # Each change starts where the one before it ended: a row signed for another
        # place (a replayed or duplicated change) does not fit here.
        came_from = last.target if last else "INIT"
        if row.source != came_from:
            return BrokenLink(pk, row.seq, f"it starts from {row.source}, but the row before it ended in {came_from}")
        previous_digest, expected_seq, last = row.digest, expected_seq + 1, row
    ends_in = last.target if last else "INIT"
    if ends_in != workflow.state:
        log = f"the log ends in {last.target}" if last else "the log is empty"
        return BrokenLink(pk, expected_seq, f"missing: {log} but the workflow is {workflow.state}")
    if (workflow.last_seq, workflow.last_digest) != (expected_seq - 1, previous_digest):
        return BrokenLink(pk, *_head_mismatch(expected_seq - 1, workflow.last_seq))
    return head_problem(workflow)


def head_problem(workflow) -> BrokenLink | None:
    """Whether the head on the workflow's row (its state, last seq and digest) is signed:
    what a caller that holds the row, but has not read its log, can check (no query)."""
    if not _signed(workflow.head_mac, HEAD_SALT, _head(workflow)):
        problem = "its MAC does not match: the workflow's state or chain head was changed"
        return BrokenLink(str(workflow.pk), None, problem)
    return None


def _head_mismatch(last_seq: int, head_seq: int) -> tuple[int | None, str]:
    if head_seq > last_seq:
        return last_seq + 1, f"missing: the log ends at #{last_seq} but its head is at #{head_seq}: its end was cut off"
    return None, f"the head (#{head_seq}) is not the log's last row (#{last_seq}): it was changed"


# --- The deletion log -----------------------------------------------------------------------


def _deletion(row, previous_digest: str) -> dict:
    return {
        "seq": row.seq,
        "workflow": str(row.workflow_id),
        "name": row.name,
        "state": row.state,
        "last_seq": row.last_seq,
        "last_digest": row.last_digest,
        "actor": row.actor_id,
        "actor_label": row.actor_label,
        "deleted_at": row.deleted_at.isoformat(),
        "previous": previous_digest,
    }


def deletion_digest(row, previous_digest: str, secret: str | None = None) -> str:
    return _mac(DELETION_SALT, _deletion(row, previous_digest), secret)


def _deletion_head(head) -> dict:
    return {"last_seq": head.last_seq, "last_digest": head.last_digest}


def sign_deletion_head(head) -> None:
    head.head_mac = _mac(DELETION_HEAD_SALT, _deletion_head(head))


@dataclass
class BrokenDeletion:
    seq: int | None  # None: the log's head
    problem: str

    def __str__(self) -> str:
        where = "head" if self.seq is None else f"deletion #{self.seq}"
        return f"deletion log: {where}: {self.problem}"


def verify_deletions() -> BrokenDeletion | None:
    """The first broken link of the deletion log or of its head, or None when both are whole."""
    from .models import DeletionLogHead, WorkflowDeletion

    previous_digest, expected_seq = "", 1
    for row in WorkflowDeletion.objects.order_by("seq").iterator():
        if row.seq != expected_seq:
            return BrokenDeletion(expected_seq, f"missing (found #{row.seq} next): a row was removed")
        if not _signed(row.digest, DELETION_SALT, _deletion(row, previous_digest)):
            return BrokenDeletion(row.seq, "its digest does not match: the row was edited or inserted")
        previous_digest, expected_seq = row.digest, expected_seq + 1
    head = DeletionLogHead.objects.filter(pk=DeletionLogHead.ONLY).first()
    if head is None:
        # No head: no deletion was ever recorded, so the log must be empty too.
        return BrokenDeletion(None, "its head is missing: it was deleted") if expected_seq > 1 else None
    if (head.last_seq, head.last_digest) != (expected_seq - 1, previous_digest):
        return BrokenDeletion(*_head_mismatch(expected_seq - 1, head.last_seq))
    if not _signed(head.head_mac, DELETION_HEAD_SALT, _deletion_head(head)):
        return BrokenDeletion(None, "its MAC does not match: the head was changed")
    return None
