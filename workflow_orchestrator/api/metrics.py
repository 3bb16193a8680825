"""GET /metrics: the Prometheus exposition, for a scraper holding ORCH_METRICS_TOKEN."""

import hmac

from django.http import Http404, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .. import metrics
from ..conf import app_settings


def _bearer_token(request) -> bytes:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""


# Exempt from CSRF: the endpoint changes nothing and takes no session, and Django's CSRF check
# would otherwise answer any other method with a 403 page before the view could say 404 or 405.
@csrf_exempt
def metrics_view(request):
    """404 for any method unless a token is configured (the endpoint does not exist then)."""
    if not app_settings.ORCH_METRICS_TOKEN:
        raise Http404("metrics are off: set ORCH_METRICS_TOKEN")
    return _scrape(request)


@require_GET
def _scrape(request):
    """401 with a missing or wrong token (compared in constant time)."""
    if not hmac.compare_digest(_bearer_token(request), app_settings.ORCH_METRICS_TOKEN.encode()):
        response = HttpResponse("401: send Authorization: Bearer <ORCH_METRICS_TOKEN>\n", status=401,
                                content_type="text/plain; charset=utf-8")  # fmt: skip
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # The classic text format, which every Prometheus version reads.
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
