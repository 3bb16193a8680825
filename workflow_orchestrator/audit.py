"""The audit log's tamper evidence, keyed with the project's SECRET_KEY: without the key
nobody can mend what an edit breaks.

- Each Transition row carries an HMAC over its content and the previous row's digest:
  editing, deleting or inserting a row breaks the chain.
- Each workflow row carries the chain's head (last seq and digest) and `head_mac`, an HMAC
  over its id, state and head: a removed tail, or a state changed without its row, no
  longer matches the head, and moving the head back does not match its MAC.
- The deletion log (WorkflowDeletion) is one chain of the same kind across all workflows,
  whose head (DeletionLogHead) is signed the same way.
- What the database alone cannot show (an earlier copy of a workflow row or of the
  deletion log's head written back over a cut log, a workflow deleted with raw SQL) shows
  against a checkpoint of every head kept outside it (`workflow_orchestrator.checkpoints`): each
  chain must still pass through the head the checkpoint saw (`since`), and a workflow it
  saw that is gone must be in the deletion log.

Rows written before a SECRET_KEY rotation verify with the old key in SECRET_KEY_FALLBACKS.
"""

import hmac
import json
from dataclasses import dataclass

from django.conf import settings
from django.utils.crypto import salted_hmac

SALT = "workflow_orchestrator.audit.transition"
HEAD_SALT = "workflow_orchestrator.audit.head"
DELETION_SALT = "workflow_orchestrator.audit.deletion"
DELETION_HEAD_SALT = "workflow_orchestrator.audit.deletion-head"
CHECKPOINT_SALT = "workflow_orchestrator.audit.checkpoint"


def _canonical(content: dict) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)


def _mac(salt: str, content: dict, secret: str | None = None) -> str:
    return salted_hmac(salt, _canonical(content), secret=secret, algorithm="sha256").hexdigest()


def _secrets() -> list[str]:
    """The current key first, then the keys of before a rotation."""
    return [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]


def _signed(value: str, salt: str, content: dict) -> bool:
    """`value` is the MAC of `content` under the current key or a fallback."""
    return any(hmac.compare_digest(value, _mac(salt, content, secret)) for secret in _secrets())


class StreamMac:
    """The MAC of a document given piece by piece (each piece a JSON value), under the
    current key and under each fallback: a document too large to hold is signed as it is
    written and checked as it is read."""

    def __init__(self, salt: str):
        self._macs = [salted_hmac(salt, "", secret, algorithm="sha256") for secret in _secrets()]

    def update(self, content) -> None:
        # A newline ends each piece: canonical JSON has none, so pieces cannot run together.
        piece = (_canonical(content) + "\n").encode()
        for mac in self._macs:
            mac.update(piece)

    def hexdigest(self) -> str:
        """The MAC under the current key (what a writer signs with)."""
        return self._macs[0].hexdigest()

    def matches(self, value: str) -> bool:
        return any(hmac.compare_digest(value, mac.hexdigest()) for mac in self._macs)


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


def verify(workflow, rows=None, since: tuple[int, str] | None = None) -> BrokenLink | None:
    """The first broken link of the workflow's audit chain or of its head, or None when
    both are whole. `rows`: its transitions in seq order, if the caller has read them
    (otherwise they are read here). `since`: the (seq, digest) of its head in a
    checkpoint, which the chain must still pass through."""
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
        if _replaced(row, since):
            return BrokenLink(pk, row.seq, REPLACED)
        previous_digest, expected_seq, last = row.digest, expected_seq + 1, row
    ends_in = last.target if last else "INIT"
    if ends_in != workflow.state:
        log = f"the log ends in {last.target}" if last else "the log is empty"
        return BrokenLink(pk, expected_seq, f"missing: {log} but the workflow is {workflow.state}")
    if (workflow.last_seq, workflow.last_digest) != (expected_seq - 1, previous_digest):
        return BrokenLink(pk, *_head_mismatch(expected_seq - 1, workflow.last_seq))
    if broken_head := head_problem(workflow):
        return broken_head
    if behind := _behind(expected_seq - 1, since):
        return BrokenLink(pk, *behind)
    return None


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


# --- Against a checkpoint -------------------------------------------------------------------

REPLACED = "it is not the row the checkpoint saw here: the log was replaced from this row on"


def _replaced(row, since: tuple[int, str] | None) -> bool:
    """The row sits where the checkpoint's head was, but is not that head."""
    return since is not None and row.seq == since[0] and row.digest != since[1]


def _behind(last_seq: int, since: tuple[int, str] | None) -> tuple[int, str] | None:
    """(seq, problem) when a whole log ends before the head a checkpoint saw."""
    if since is None or last_seq >= since[0]:
        return None
    return last_seq + 1, (
        f"missing: the log ends at #{last_seq} but the checkpoint saw #{since[0]}: its end was cut off "
        "and its head set back to an earlier copy"
    )


@dataclass
class Gone:
    """A workflow a checkpoint saw that is no longer there, and whose deletion is not recorded."""

    workflow_id: str
    problem: str

    def __str__(self) -> str:
        return f"workflow {self.workflow_id}: {self.problem}"


def verify_gone(workflow_id, since: tuple[int, str], deletions: list) -> Gone | None:
    """A workflow that a checkpoint saw with the head `since` and that no longer exists must
    have been deleted through the engine after that head: its row in the deletion log
    (`deletions`, the log's rows for its id) records that head or a later one."""
    for row in deletions:
        if row.last_seq > since[0] or (row.last_seq, row.last_digest) == since:
            return None
    if not deletions:
        return Gone(
            str(workflow_id),
            f"gone, and not in the deletion log (the checkpoint saw it at #{since[0]}): it was deleted "
            "outside the engine",
        )
    row = deletions[-1]
    return Gone(
        str(workflow_id),
        f"deletion #{row.seq} records it at #{row.last_seq}, not at or after the head the checkpoint saw "
        f"(#{since[0]}): its log was cut or replaced before it was deleted",
    )


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


def verify_deletions(rows, head, since: tuple[int, str] | None = None) -> BrokenDeletion | None:
    """The first broken link of the deletion log (`rows`, in seq order) or of its `head`
    (None when there is none), or None when both are whole. `since`: the (seq, digest) of
    its head in a checkpoint, which the log must still pass through. Called by
    `WorkflowDeletion.objects.verify`."""
    previous_digest, expected_seq = "", 1
    for row in rows:
        if row.seq != expected_seq:
            return BrokenDeletion(expected_seq, f"missing (found #{row.seq} next): a row was removed")
        if not _signed(row.digest, DELETION_SALT, _deletion(row, previous_digest)):
            return BrokenDeletion(row.seq, "its digest does not match: the row was edited or inserted")
        if _replaced(row, since):
            return BrokenDeletion(row.seq, REPLACED)
        previous_digest, expected_seq = row.digest, expected_seq + 1
    if head is None:
        # No head: no deletion was ever recorded, so the log must be empty too.
        if expected_seq > 1:
            return BrokenDeletion(None, "its head is missing: it was deleted")
    elif (head.last_seq, head.last_digest) != (expected_seq - 1, previous_digest):
        return BrokenDeletion(*_head_mismatch(expected_seq - 1, head.last_seq))
    elif not _signed(head.head_mac, DELETION_HEAD_SALT, _deletion_head(head)):
        return BrokenDeletion(None, "its MAC does not match: the head was changed")
    if behind := _behind(expected_seq - 1, since):
        return BrokenDeletion(*behind)
    return None
