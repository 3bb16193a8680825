"""A project's urls.py as docs/INSTALL.md has it, with the API under a prefix of its own:
the admin's URLs and one include, nothing else."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("orchestrator/", include("workflow_orchestrator.urls")),
]
