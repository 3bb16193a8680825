"""The hot path's SQL, read from one `.sql` file per database (postgresql.sql, sqlite.sql).

Each statement in a file is written out whole, under a header:

    -- name: claim
    -- A queued attempt becomes RUNNING for one worker.          (one line: what it does)
    -- transitions: claim QUEUED->RUNNING                         (the task statuses it changes)
    /* claim */ UPDATE ...

`transitions` lists each task status change the statement can make, comma-separated, as
the name of the task transition it performs (models.TASK_TRANSITIONS) and SOURCE->TARGET:
`create ->PENDING` for a task inserted with that status; `none` when it changes no task's
status. The text starts with its name in an SQL comment, so that tests,
pg_stat_statements and PostgreSQL's statement log can tell the statements apart.

Nothing is added to a text at run time but its parameters (`%(name)s`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent
HEADER = re.compile(
    r"^-- name: (?P<name>[a-z_]+)\n-- (?P<comment>[^\n]+)\n-- transitions: (?P<transitions>[^\n]+)\n", re.M
)
STATUS_CHANGE = re.compile(r"^(?P<transition>[a-z_]+) (?P<source>[A-Z]*)->(?P<target>[A-Z]+)$")


@dataclass(frozen=True)
class Statement:
    name: str
    comment: str
    transitions: frozenset[tuple[str, str | None, str]]  # (task transition, source, target); source None: inserted
    text: str


class SQLFileError(ValueError):
    """A `.sql` file that does not follow the format above."""


def parse(source: str, filename: str = "<sql>") -> dict[str, Statement]:
    """The statements of one file's `source`, by name."""
    headers = list(HEADER.finditer(source))
    if not headers:
        raise SQLFileError(f"{filename}: no statement")
    if "-- name:" in source[: headers[0].start()]:
        raise SQLFileError(f"{filename}: a malformed header before the first statement")
    statements: dict[str, Statement] = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        name = header["name"]
        text = source[header.end() : following.start() if following else len(source)].strip()
        if name in statements:
            raise SQLFileError(f"{filename}: {name} is named twice")
        if not text.startswith(f"/* {name} */ "):
            raise SQLFileError(f"{filename}: {name}'s text must start with /* {name} */")
        if "-- name:" in text:
            raise SQLFileError(f"{filename}: a malformed header inside {name}")
        statements[name] = Statement(name, header["comment"], _transitions(header["transitions"], name), text)
    return statements


def _transitions(listed: str, name: str) -> frozenset[tuple[str, str | None, str]]:
    if listed.strip() == "none":
        return frozenset()
    changes = set()
    for change in listed.split(","):
        found = STATUS_CHANGE.match(change.strip())
        if found is None:
            raise SQLFileError(f"{name}: {change.strip()!r} is not TRANSITION SOURCE->TARGET")
        changes.add((found["transition"], found["source"] or None, found["target"]))
    return frozenset(changes)


@cache
def statements(vendor: str) -> dict[str, Statement]:
    """The statements for the database `vendor` (Django's connection.vendor), read once."""
    path = DIRECTORY / f"{vendor}.sql"
    return parse(path.read_text(), path.name)


def task_transitions_by_statement(vendor: str) -> dict[str, frozenset[tuple[str, str | None, str]]]:
    """Each named statement's task status changes, (task transition, source, target): for
    checking them against the task status table."""
    return {name: statement.transitions for name, statement in statements(vendor).items()}
