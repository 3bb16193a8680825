"""What the database can store, checked before anything from outside is written: a
request's fields, and a handler's result.

PostgreSQL refuses a NUL character in text and in jsonb, and no encoding can write a lone
surrogate (SQLite stores one, and then every read of the row fails). Nor can jsonb hold
NaN or Infinity, which are not JSON although Python's json module reads and writes them.
Deeply nested JSON is refused before anything recursive (encoding, hashing, the
database's own parser) sees it. The walks here keep their own stack, so that no nesting
can exhaust Python's.
"""

import functools
import json
import math
import sys

MAX_DEPTH = 64  # levels of objects and lists in one stored JSON value
# A list of tasks holds each task's params two levels down.
TASKS_MAX_DEPTH = MAX_DEPTH + 2


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (an unpaired \\ud800-\\udfff escape)"
    return None


def number_problem(number) -> str | None:
    """Why the number `number` cannot be stored as JSON, or None."""
    if isinstance(number, float) and not math.isfinite(number):
        return f"is {number!r}, which JSON cannot hold (it has no NaN or Infinity)"
    limit = sys.get_int_max_str_digits()
    # Python writes no int longer than this as text (nor reads one), so json.dumps cannot.
    if isinstance(number, int) and limit and abs(number) >= _power_of_ten(limit):
        return f"has more than {limit} digits, more than can be written as text"
    return None


@functools.cache
def _power_of_ten(exponent: int) -> int:
    return 10**exponent


def json_problem(value, path: str = "$", *, max_depth: int | None = MAX_DEPTH) -> str | None:
    """Why the JSON value `value` cannot be stored, or None; `path` names where. With
    `max_depth` None, only its text and numbers are checked."""
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return f"{where} {problem}"
        elif isinstance(item, float | int):
            problem = number_problem(item)
            if problem:
                return f"{where} {problem}"
        elif isinstance(item, dict | list | tuple):
            if max_depth is not None and depth >= max_depth:
                return f"{where} is nested more than {max_depth} levels deep"
            if isinstance(item, dict):
                children = []
                for key, child in item.items():
                    problem = text_problem(key) if isinstance(key, str) else None
                    if problem:
                        return f"a key of {where} {problem}"
                    children.append((child, f"{where}.{key}", depth + 1))
            else:
                children = [(child, f"{where}[{index}]", depth + 1) for index, child in enumerate(item)]
            stack.extend(reversed(children))
    return None


def depth_exceeds(value, max_depth: int) -> bool:
    """Whether `value` nests objects and lists more than `max_depth` levels deep."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


# --- Reading JSON typed by someone (the admin's forms, the command line) ---------------------


class _Unreadable(ValueError):
    """A number json.loads would read into something JSON cannot hold."""


def _excerpt(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:20]}…"


def _refuse_constant(name: str):
    raise _Unreadable(f"holds {name}, which is not a JSON number (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _Unreadable(f"holds {_excerpt(text)}, which is too large for a JSON number (it overflows to infinity)")
    return number


def _readable_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        limit = sys.get_int_max_str_digits()
        raise _Unreadable(f"holds a number of more than {limit} digits, more than can be read") from None


def parse_json(text: str, where: str, *, max_depth: int = MAX_DEPTH):
    """The value of the JSON text `text`, read strictly: ValueError says why it cannot be
    stored, naming `where` (not JSON; NaN, Infinity or a number that overflows to it; a
    number too long to read; nested more than `max_depth` levels deep; text the database
    cannot hold)."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_readable_int)
    except _Unreadable as exc:
        raise ValueError(f"{where} {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:  # json.loads recurses once per level
        raise ValueError(f"{where} is nested more than {max_depth} levels deep") from None
    if problem := json_problem(value, where, max_depth=max_depth):
        raise ValueError(problem)
    return value


# --- Labels: a workflow's flat object of string keys and values -----------------------------

MAX_LABELS = 20
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 200
# A key is matched as `k:v` in a query (`?label=`) and `k=v` on the command line: it holds
# neither separator, nor spaces, so that both read it back whole.
_LABEL_KEY_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/")


def label_key_problem(key) -> str | None:
    """Why `key` cannot be a label's key, or None."""
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    if len(key) > MAX_LABEL_KEY:
        return f"is longer than {MAX_LABEL_KEY} characters"
    if not set(key) <= _LABEL_KEY_CHARACTERS:
        return "may hold only letters, digits and _ . - /"
    return None


def label_value_problem(value) -> str | None:
    """Why `value` cannot be a label's value, or None."""
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > MAX_LABEL_VALUE:
        return f"is longer than {MAX_LABEL_VALUE} characters"
    return text_problem(value)


def labels_problem(labels) -> str | None:
    """Why `labels` cannot be a workflow's labels, or None: a flat object of at most
    MAX_LABELS string keys and values."""
    if not isinstance(labels, dict):
        return "must be an object of string keys and values"
    if len(labels) > MAX_LABELS:
        return f"may hold at most {MAX_LABELS} labels, not {len(labels)}"
    for key, value in labels.items():
        if problem := label_key_problem(key):
            return f"key {str(key)[:MAX_LABEL_KEY]!r} {problem}"
        if problem := label_value_problem(value):
            return f"{key} {problem}"
    return None


def parse_label(text: str, separator: str) -> tuple[str, str]:
    """(key, value) of `text` written `key<separator>value` (`env:prod` in a query,
    `env=prod` on the command line); ValueError says why it is not one."""
    key, found, value = text.partition(separator)
    shown = repr(text[:80])
    if not found:
        raise ValueError(f"{shown} is not key{separator}value")
    if problem := label_key_problem(key):
        raise ValueError(f"{shown}: the key {problem}")
    if not value:
        raise ValueError(f"{shown}: the label has no value")
    if problem := label_value_problem(value):
        raise ValueError(f"{shown}: the value {problem}")
    return key, value


def parse_labels(texts, separator: str) -> dict[str, str]:
    """The labels of `texts`, each written `key<separator>value`; ValueError says why one is
    not a label, or that a key is given twice with two values."""
    labels = {}
    for text in texts:
        key, value = parse_label(text, separator)
        if labels.setdefault(key, value) != value:
            raise ValueError(f"{key} is given twice, as {labels[key]!r} and {value!r}")
    return labels
