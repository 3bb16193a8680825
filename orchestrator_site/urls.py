from django.contrib import admin
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from workflow_orchestrator.api.renderers import with_language


class SwaggerUIView(SpectacularSwaggerView):
    """The page, for GET (and HEAD) alone: OPTIONS would be DRF's metadata, which the page's
    HTML renderer has no template for, so it answers 405 as any other method does."""

    http_method_names = ["get", "head"]

    def finalize_response(self, request, response, *args, **kwargs):
        # Not in get(), which drf-spectacular would then document as an operation of the API.
        response = super().finalize_response(request, response, *args, **kwargs)
        response.add_post_render_callback(
            lambda page: setattr(page, "content", with_language(page.content.decode(page.charset)))
        )
        return response


# The home page only redirects, so other methods answer 405: exempt from CSRF, whose 403 page
# would otherwise come first (nothing here changes anything).
home = RedirectView.as_view(url="/workflows/", permanent=False, http_method_names=["get", "head", "options"])

urlpatterns = [
    path("", csrf_exempt(home)),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    path("schema/", SpectacularAPIView.as_view()),
    path("docs", SwaggerUIView.as_view(url_name="schema"), name="docs"),
    path("docs/", SwaggerUIView.as_view(url_name="schema")),
    # The REST API and /metrics.
    path("", include("workflow_orchestrator.urls")),
]
