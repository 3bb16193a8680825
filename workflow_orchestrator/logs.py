"""The engine's fields on its log records: `extra=` for logging calls, shown as JSON keys
with LOG_FORMAT=json (see settings.LOGGING)."""


def fields(*, workflow_id=None, task_id=None, attempt=None, event=None) -> dict:
    """The fields that apply (those given), with the workflow's id as text."""
    given = {"workflow_id": workflow_id, "task_id": task_id, "attempt": attempt, "event": event}
    return {name: str(value) if name == "workflow_id" else value for name, value in given.items() if value is not None}
