"""The URLs a project includes, under any prefix: the REST API and GET /metrics.

    path("", include("workflow_orchestrator.urls")),

Every path answers with or without a trailing slash. The admin's pages (the overview
included) come with the admin's own URLs."""

from django.urls import include, path, re_path

from .api.metrics import metrics_view

urlpatterns = [
    re_path(r"^metrics/?$", metrics_view, name="metrics"),
    path("", include("workflow_orchestrator.api.urls")),
]
