"""Who may see and act on a workflow through the API: the admin's rule, owners aside.

Seeing someone else's workflows needs the model's view, change or delete permission;
acting on them needs change (delete, to delete), staff or not. Users always see and act
on the workflows they created. Superusers hold every permission."""

from ..models import Workflow

OTHERS_PERMISSIONS = ("view", "change", "delete")


def _permission(action: str) -> str:
    return f"{Workflow._meta.app_label}.{action}_workflow"


def can_see_all(user) -> bool:
    return any(user.has_perm(_permission(action)) for action in OTHERS_PERMISSIONS)


def may_change(user, workflow: Workflow) -> bool:
    return workflow.created_by_id == user.pk or user.has_perm(_permission("change"))


def may_delete(user, workflow: Workflow) -> bool:
    return workflow.created_by_id == user.pk or user.has_perm(_permission("delete"))


def may_bulk(user) -> bool:
    """Bulk operations act on everyone's workflows: staff with the change permission."""
    return user.is_staff and user.has_perm(_permission("change"))


def rights(user, workflow: Workflow) -> dict:
    """services.available_actions' arguments for `user` (everything, without one)."""
    if user is None:
        return {}
    return {"may_change": may_change(user, workflow), "may_delete": may_delete(user, workflow)}
