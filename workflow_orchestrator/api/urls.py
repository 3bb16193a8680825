"""Every path of the original specification, with or without a trailing slash. The
router serves /workflows/… and /schedules/…; the other paths are routed onto the same viewset actions."""

from django.urls import re_path
from rest_framework.routers import SimpleRouter

from .schedules import ScheduleViewSet
from .views import WorkflowViewSet

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("schedules", ScheduleViewSet, basename="schedule")

ID = r"(?P<pk>[^/]+)"


def route(path: str, actions: dict, name: str, title: str, detail: bool = True):
    """`title` names the view on the browsable API's page."""
    view = WorkflowViewSet.as_view(actions, detail=detail, basename="workflow", name=title)
    return re_path(rf"^{path}/?$", view, name=name)


urlpatterns = [
    route("workflow/start", {"post": "create_and_start"}, "workflow-create-and-start", "Start a workflow", False),
    route(f"workflow/{ID}", {"get": "retrieve", "delete": "destroy"}, "workflow-legacy-detail", "Workflow"),
    route(f"workflow/{ID}/next", {"post": "next_step"}, "workflow-legacy-next", "Next step"),
    route(f"workflow/{ID}/retry", {"post": "retry"}, "workflow-legacy-retry", "Retry"),
    route(f"execution/workflows/{ID}/start", {"post": "start"}, "execution-start", "Start"),
    route(f"execution/workflows/{ID}/status", {"get": "status"}, "execution-status", "Status"),
    route(f"execution/workflows/{ID}/cancel", {"post": "cancel"}, "execution-cancel", "Cancel"),
    route(f"execution/workflows/{ID}/pause", {"post": "pause"}, "execution-pause", "Pause"),
    route(f"execution/workflows/{ID}/resume", {"post": "resume"}, "execution-resume", "Resume"),
    route("execution/stats", {"get": "stats"}, "execution-stats", "Stats", detail=False),
    *router.urls,
]
