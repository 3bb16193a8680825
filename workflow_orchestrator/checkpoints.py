"""Audit checkpoints: a signed document of every audit chain's head, to keep outside the
database, and the check of every chain (`workflow verify --all`), with or without one.

Both read the database in a fixed number of queries whatever the number of workflows,
each streamed in workflow id order (the workflows, their transitions, the deletion log's
rows), and hold about one chunk of each at a time; the document is written and read piece
by piece. Every chain is checked by the one rule in `workflow_orchestrator.audit`.

The document (one JSON object; its layout and whitespace do not matter, its members'
order does):

    {"format": "workflow_orchestrator.audit.checkpoint/1", "taken_at": "…", "deletion_log": {"seq": 3, "digest": "…"},
     "workflows": [
    {"id": "…", "seq": 4, "digest": "…"},
    …
    ], "signature": "…"}

`workflows` is in id order; `deletion_log` is null when the log was broken when the
checkpoint was taken. The signature is an HMAC keyed with SECRET_KEY over every member
before it (`audit.StreamMac`).
"""

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from operator import attrgetter
from typing import TextIO
from uuid import UUID

from django.db import connection, transaction
from django.utils import timezone

from . import audit
from .models import DeletionLogHead, Transition, Workflow, WorkflowDeletion

FORMAT = "workflow_orchestrator.audit.checkpoint/1"
# Rows fetched per round trip of each stream: what is held in memory at a time.
CHUNK = 2000
# Characters of a checkpoint file read at a time (at most about two such are held).
READ_CHARS = 1 << 16
# What audit.verify reads of a workflow and of a transition.
WORKFLOW_FIELDS = ("pk", "state", "last_seq", "last_digest", "head_mac")
TRANSITION_FIELDS = (
    "workflow_id", "seq", "source", "target", "event", "actor_id", "actor_label", "reason", "data", "created_at",
    "digest",
)  # fmt: skip


class CheckpointError(Exception):
    """The file is not a checkpoint this project wrote with one of its keys."""


@dataclass(frozen=True)
class Head:
    """A workflow's chain head as a checkpoint saw it."""

    workflow_id: UUID
    seq: int
    digest: str

    @property
    def since(self) -> tuple[int, str]:
        return self.seq, self.digest


# --- Reading the database -------------------------------------------------------------------


@contextmanager
def snapshot():
    """One consistent view of the database for every read inside, which blocks no writer:
    without it, a workflow that moves on between the read of its row and the read of its
    transitions would look broken. PostgreSQL: a read-only REPEATABLE READ transaction;
    SQLite: a DEFERRED transaction (a read transaction in WAL mode), not the IMMEDIATE one
    the site configures, which would hold the write lock for the whole walk. Inside a
    transaction already (tests), that transaction's view is used."""
    if connection.in_atomic_block:
        yield
        return
    with ExitStack() as stack:
        connection.ensure_connection()  # the SQLite backend sets its transaction mode on connecting
        if connection.vendor == "sqlite":
            mode, connection.transaction_mode = connection.transaction_mode, "DEFERRED"
            try:
                stack.enter_context(transaction.atomic())
            finally:
                connection.transaction_mode = mode
        else:
            stack.enter_context(transaction.atomic())
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def chains() -> Iterator[tuple[object, list]]:
    """(workflow, its transitions in seq order) for every workflow in id order, from two
    queries read side by side. The workflow is a row of WORKFLOW_FIELDS, enough for
    `audit.verify`."""
    workflows = Workflow.objects.order_by("pk").values_list(*WORKFLOW_FIELDS, named=True)
    transitions = Transition.objects.order_by("workflow_id", "seq").values_list(*TRANSITION_FIELDS, named=True)
    groups = groupby(transitions.iterator(chunk_size=CHUNK), key=attrgetter("workflow_id"))
    group_id, group = next(groups, (None, ()))
    for workflow in workflows.iterator(chunk_size=CHUNK):
        # Rows of a workflow that is not there (none, with the foreign key) are passed over.
        while group_id is not None and group_id < workflow.pk:
            group_id, group = next(groups, (None, ()))
        rows = []
        if group_id == workflow.pk:
            rows = list(group)
            group_id, group = next(groups, (None, ()))
        yield workflow, rows


class DeletionLookup:
    """The deletion log's rows of each workflow id asked for, ids asked in ascending order:
    one query, read along as far as the last id asked, started only if one is asked."""

    def __init__(self):
        self._groups = None
        self._current = (None, [])

    def rows(self, workflow_id: UUID) -> list:
        if self._groups is None:
            log = WorkflowDeletion.objects.order_by("workflow_id", "seq")
            rows = log.values_list("workflow_id", "seq", "last_seq", "last_digest", named=True)
            by_workflow = groupby(rows.iterator(chunk_size=CHUNK), attrgetter("workflow_id"))
            self._groups = ((key, list(group)) for key, group in by_workflow)
            self._current = next(self._groups, (None, []))
        while self._current[0] is not None and self._current[0] < workflow_id:
            self._current = next(self._groups, (None, []))
        return self._current[1] if self._current[0] == workflow_id else []


def _joined(seen: Iterator[Head], found: Iterator[tuple]) -> Iterator[tuple[Head | None, tuple | None]]:
    """Pairs of (checkpointed head, (workflow, rows)) by workflow id, either side None where
    the other has no match; both streams in ascending id order."""
    head, chain = next(seen, None), next(found, None)
    while head or chain:
        if chain is None or (head and head.workflow_id < chain[0].pk):
            yield head, None
            head = next(seen, None)
        elif head is None or chain[0].pk < head.workflow_id:
            yield None, chain
            chain = next(found, None)
        else:
            yield head, chain
            head, chain = next(seen, None), next(found, None)


# --- verify --all ---------------------------------------------------------------------------


class Verification:
    """Every workflow's chain and the deletion log, against a checkpoint if one is given:
    iterate it for each problem as it is found (an audit.BrokenLink, audit.Gone or
    audit.BrokenDeletion); its counts are complete once it is exhausted. Run it inside
    `snapshot()`."""

    def __init__(self, checkpoint: "Checkpoint | None" = None):
        self.checkpoint = checkpoint
        self.checked = self.broken = 0
        self.gone = 0  # checkpointed workflows deleted without a record
        self.deleted = 0  # checkpointed workflows deleted through the engine since
        self.deletion_log: audit.BrokenDeletion | None = None

    def __iter__(self):
        yield from self._workflows()
        since = self.checkpoint.deletion_log if self.checkpoint else None
        self.deletion_log = WorkflowDeletion.objects.verify(since=since)
        if self.deletion_log:
            yield self.deletion_log

    def _workflows(self):
        deletions = DeletionLookup()
        seen = self.checkpoint.heads() if self.checkpoint else iter(())
        for head, chain in _joined(seen, chains()):
            if chain is None:
                gone = audit.verify_gone(head.workflow_id, head.since, deletions.rows(head.workflow_id))
                if gone:
                    self.gone += 1
                    yield gone
                else:
                    self.deleted += 1
                continue
            self.checked += 1
            broken = audit.verify(*chain, since=head.since if head else None)
            if broken:
                self.broken += 1
                yield broken

    @property
    def failed(self) -> bool:
        return bool(self.broken or self.gone or self.deletion_log)


# --- Writing a checkpoint -------------------------------------------------------------------


@dataclass
class Written:
    taken_at: datetime
    workflows: int = 0
    left_out: int = 0  # workflows whose chain was broken when it was taken
    deletion_log: tuple[int, str] | None = None


def write(out: TextIO, on_broken: Callable[[object], None]) -> Written:
    """Write a signed checkpoint of every intact chain's head to `out`, in one snapshot, a
    whole line at a time. A broken chain, or a broken deletion log, is left out (its head
    is no point to extend) and given to `on_broken`."""
    mac = audit.StreamMac(audit.CHECKPOINT_SALT)

    def member(key: str, value) -> str:
        mac.update([key, value])
        return f"{json.dumps(key)}: {json.dumps(value)}"

    with snapshot():
        written = Written(taken_at=timezone.now())
        broken_log = WorkflowDeletion.objects.verify()
        if broken_log:
            on_broken(broken_log)
        else:
            stored = DeletionLogHead.objects.filter(pk=DeletionLogHead.ONLY).values_list("last_seq", "last_digest")
            written.deletion_log = stored.first() or (0, "")
        log = written.deletion_log
        header = [
            member("format", FORMAT),
            member("taken_at", written.taken_at.isoformat()),
            member("deletion_log", log and {"seq": log[0], "digest": log[1]}),
        ]
        mac.update("workflows")
        out.write("{" + ", ".join(header) + ', "workflows": [\n')
        entry = None  # written once the next one shows whether a comma follows it
        for workflow, rows in chains():
            broken = audit.verify(workflow, rows)
            if broken:
                written.left_out += 1
                on_broken(broken)
                continue
            if entry:
                out.write(entry + ",\n")
            head = {"id": str(workflow.pk), "seq": workflow.last_seq, "digest": workflow.last_digest}
            mac.update(head)
            entry = json.dumps(head)
            written.workflows += 1
    if entry:
        out.write(entry + "\n")
    out.write(f'], "signature": {json.dumps(mac.hexdigest())}}}\n')
    return written


def write_file(path: str, on_broken: Callable[[object], None]) -> Written:
    """`write` to a file, replaced whole once the document is complete: an interrupted run
    leaves the previous checkpoint in place."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, prefix=".checkpoint-", delete=False) as out:
        try:
            written = write(out, on_broken)
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            os.unlink(out.name)
            raise
    os.replace(out.name, path)
    return written


# --- Reading a checkpoint -------------------------------------------------------------------


class Checkpoint:
    """A checkpoint file, read through once when opened (its layout, its signature and the
    order of its entries checked before anything is compared with it), then once more,
    entry by entry, by `heads()`."""

    def __init__(self, path: str):
        self.path = path
        self.taken_at: datetime | None = None
        self.deletion_log: tuple[int, str] | None = None
        self.workflows = sum(1 for _ in self.heads())

    def heads(self) -> Iterator[Head]:
        """Its workflows' heads in id order; the signature is checked again at the end, so a
        file changed since it was opened is refused too."""
        try:
            with open(self.path, encoding="utf-8") as file:
                yield from self._read(_JsonStream(file, READ_CHARS))
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"cannot be read: {exc}") from None

    def _read(self, document: "_JsonStream") -> Iterator[Head]:
        mac = audit.StreamMac(audit.CHECKPOINT_SALT)
        members = document.members()

        def member(key: str):
            found = next(members, None)
            if found != key:
                raise CheckpointError(f"expected the member {key!r}, found {found!r}")
            if key == "workflows":
                mac.update(key)
                return None
            value = document.value()
            if key != "signature":
                mac.update([key, value])
            return value

        if member("format") != FORMAT:
            raise CheckpointError(f"not a checkpoint: its format is not {FORMAT!r}")
        self.taken_at = _parse_time(member("taken_at"))
        self.deletion_log = _parse_log(member("deletion_log"))
        member("workflows")
        previous, in_order = None, True
        for item in document.items():
            head = _parse_head(item)
            mac.update(item)
            in_order = in_order and (previous is None or previous < head.workflow_id)
            previous = head.workflow_id
            yield head
        signature = member("signature")
        if next(members, None) is not None:
            raise CheckpointError("it has members after its signature")
        document.end()
        if not isinstance(signature, str) or not mac.matches(signature):
            raise CheckpointError(
                "its signature does not match: it was changed after it was written, or signed with another key"
            )
        if not in_order:
            raise CheckpointError("its workflows are not in id order")


def _parse_time(value) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"taken_at is not a time: {value!r}") from None


def _parse_log(value) -> tuple[int, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"seq", "digest"}:
        raise CheckpointError(f"deletion_log is not a head: {value!r}")
    return _seq(value["seq"]), _digest(value["digest"])


def _parse_head(item) -> Head:
    if not isinstance(item, dict) or set(item) != {"id", "seq", "digest"}:
        raise CheckpointError(f"a workflow entry is not an id, seq and digest: {item!r}")
    try:
        workflow_id = UUID(item["id"])
    except (TypeError, ValueError, AttributeError):
        raise CheckpointError(f"a workflow entry's id is not a UUID: {item['id']!r}") from None
    return Head(workflow_id, _seq(item["seq"]), _digest(item["digest"]))


def _seq(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"a seq is not a whole number: {value!r}")
    return value


def _digest(value) -> str:
    if not isinstance(value, str):
        raise CheckpointError(f"a digest is not a string: {value!r}")
    return value


class _JsonStream:
    """A JSON text read from a file a chunk at a time: an object's members and an array's
    items are walked one by one, and each value is decoded whole, so no single value may
    be longer than a chunk (a checkpoint's are a few dozen characters)."""

    WHITESPACE = re.compile(r"[ \t\n\r]*")
    DECODER = json.JSONDecoder()

    def __init__(self, file: TextIO, chunk: int):
        self.file, self.chunk = file, chunk
        self.text, self.at, self.offset, self.ended = "", 0, 0, False

    def _next_char(self) -> str:
        """The next character that is not whitespace ('' at the end), left unread; at least a
        chunk of text is buffered from it unless the file ends first."""
        while True:
            while not self.ended and len(self.text) - self.at < self.chunk:
                more = self.file.read(self.chunk)
                self.offset += self.at
                self.text, self.at, self.ended = self.text[self.at :] + more, 0, not more
            self.at = self.WHITESPACE.match(self.text, self.at).end()
            if self.at < len(self.text) or self.ended:
                return self.text[self.at : self.at + 1]

    def _take(self, char: str) -> bool:
        if self._next_char() == char:
            self.at += 1
            return True
        return False

    def _expect(self, char: str) -> None:
        if not self._take(char):
            found = self._next_char() or "the end"
            raise CheckpointError(f"not JSON: expected {char!r} at character {self.offset + self.at}, found {found!r}")

    def value(self):
        self._next_char()
        try:
            value, end = self.DECODER.raw_decode(self.text, self.at)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"not JSON: {exc.msg} at character {self.offset + exc.pos}") from None
        if end == len(self.text) and not self.ended:
            raise CheckpointError(f"a value longer than {self.chunk} characters at {self.offset + self.at}")
        self.at = end
        return value

    def members(self) -> Iterator[str]:
        """An object's keys in order; read each key's value before asking for the next."""
        self._expect("{")
        if self._take("}"):
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise CheckpointError(f"not JSON: a key is not a string at character {self.offset + self.at}")
            self._expect(":")
            yield key
            if self._take("}"):
                return
            self._expect(",")

    def items(self) -> Iterator:
        self._expect("[")
        if self._take("]"):
            return
        while True:
            yield self.value()
            if self._take("]"):
                return
            self._expect(",")

    def end(self) -> None:
        if self._next_char():
            raise CheckpointError(f"text after the document, at character {self.offset + self.at}")
