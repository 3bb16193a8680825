"""What the database can store, checked before anything from outside is written: a
request's fields, and a handler's result.

PostgreSQL refuses a NUL character in text and in jsonb, and no encoding can write a lone
surrogate (SQLite stores one, and then every read of the row fails). Deeply nested JSON
is refused before anything recursive (encoding, hashing, the database's own parser)
sees it. The walks here keep their own stack, so that no nesting can exhaust Python's.
"""

MAX_DEPTH = 64  # levels of objects and lists in one stored JSON value


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (an unpaired \\ud800-\\udfff escape)"
    return None


def json_problem(value, path: str = "$", *, max_depth: int | None = MAX_DEPTH) -> str | None:
    """Why the JSON value `value` cannot be stored, or None; `path` names where. With
    `max_depth` None, only its text is checked."""
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
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
