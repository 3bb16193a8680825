"""The audit log's tamper evidence: each Transition row carries an HMAC over its content
and the previous row's digest, keyed with the project's SECRET_KEY. Editing, deleting or
inserting a row breaks the chain, and without the key nobody can mend it."""

import hmac
import json
from dataclasses import dataclass

from django.conf import settings
from django.utils.crypto import salted_hmac

SALT = "workflows.audit.transition"


def _content(row, previous_digest: str) -> str:
    return json.dumps(
        {
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
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )


def digest(row, previous_digest: str, secret: str | None = None) -> str:
    return salted_hmac(SALT, _content(row, previous_digest), secret=secret, algorithm="sha256").hexdigest()


def _matches(row, previous_digest: str) -> bool:
    # Rows written before a SECRET_KEY rotation verify with the old key in SECRET_KEY_FALLBACKS.
    for secret in [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]:
        if hmac.compare_digest(row.digest, digest(row, previous_digest, secret)):
            return True
    return False


@dataclass
class BrokenLink:
    workflow_id: str
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"workflow {self.workflow_id}: transition #{self.seq}: {self.problem}"


def verify(workflow) -> BrokenLink | None:
    """The first broken link of the workflow's audit chain, or None when it is whole."""
    previous_digest, expected_seq, last = "", 1, None
    for row in workflow.transitions.order_by("seq"):
        if row.seq != expected_seq:
            return BrokenLink(str(workflow.pk), expected_seq, f"missing (found #{row.seq} next): a row was deleted")
        if not _matches(row, previous_digest):
            return BrokenLink(str(workflow.pk), row.seq, "its digest does not match: the row was edited or inserted")
        previous_digest, expected_seq, last = row.digest, expected_seq + 1, row
    if last is not None and last.target != workflow.state:
        return BrokenLink(
            str(workflow.pk),
            expected_seq,
            f"missing: the log ends in {last.target} but the workflow is {workflow.state}",
        )
    return None
