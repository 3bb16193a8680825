"""Webhooks: a workflow's callback_url is called with a signed POST when it ends (COMPLETE,
FAILED or CANCELLED).

- The change that ends the workflow queues a `deliver_webhook` job with the change itself
  (workflows.services): the URL comes back from the change's statement, so a change that
  ends no workflow costs nothing more.
- Each transition is delivered at most once: one WebhookDelivery per workflow and seq, its
  body built once, and each attempt claimed with a conditional update, so that a job
  delivered twice, or a retry queued twice, sends nothing twice.
- Only hosts ORCH_WEBHOOK_ALLOWED_HOSTS allows are called, and an address that is not
  public (private, loopback, link-local, reserved) only when its host is named there
  exactly: checked when the URL is given and again before every attempt (DNS may have
  changed), and the request goes to the address that was checked.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import SplitResult, urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import queue, values
from .models import Transition, WebhookAttempt, WebhookDelivery, Workflow

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Orchestrator-Signature"
DELIVERY_HEADER = "X-Orchestrator-Delivery"
MAX_URL_LENGTH = 2000
# Answers worth another attempt besides 5xx: the receiver timed out, or asks to slow down.
# Any other answer (a 4xx says the request itself is refused) is final.
RETRIED_STATUSES = (408, 429)
# Of the receiver's answer, only this much is read (its status is what counts).
READ_LIMIT = 64 * 1024
Status = WebhookDelivery.Status


class Refused(Exception):
    """A URL the settings do not allow calling."""


# --- Which URLs may be called ---------------------------------------------------------------


def _allowed(host: str) -> str | None:
    """ "exact" for a host named in ORCH_WEBHOOK_ALLOWED_HOSTS, "public" for one a wildcard
    covers (its addresses must then be public), None for any other."""
    allowed = settings.ORCH_WEBHOOK_ALLOWED_HOSTS
    if host in allowed:
        return "exact"
    if "*" in allowed or any(pattern.startswith("*.") and host.endswith(pattern[1:]) for pattern in allowed):
        return "public"
    return None


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:127.0.0.1 is 127.0.0.1
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass
class Target:
    parts: SplitResult
    address: str  # the checked address the request goes to


def check(url: str) -> Target:
    """Where `url` may be called, resolved now; Refused says why it may not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused("only http and https URLs can be called")
    try:
        host, port = (parts.hostname or "").rstrip(".").lower(), parts.port
    except ValueError:
        raise Refused("its port is not a number from 0 to 65535") from None
    if not host:
        raise Refused("it names no host")
    if parts.username or parts.password:
        raise Refused("it must not carry a user name or password")
    allowed = _allowed(host)
    if allowed is None:
        raise Refused(f"the host {host} is not allowed by ORCH_WEBHOOK_ALLOWED_HOSTS")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError):
        raise Refused(f"the host {host} does not resolve") from None
    if allowed != "exact":
        for address in addresses:
            if not _is_public(address):
                raise Refused(
                    f"the host {host} resolves to {address}, which is not a public address"
                    " (private, loopback, link-local or reserved): name the host in ORCH_WEBHOOK_ALLOWED_HOSTS"
                )
    return Target(parts, addresses[0])


def validate_callback_url(url) -> str:
    """The callback_url to store ("" for none); ValidationError naming callback_url."""
    if url in (None, ""):
        return ""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        problem = f"must be a URL of at most {MAX_URL_LENGTH} characters"
    elif problem := values.text_problem(url):
        pass
    elif not settings.ORCH_WEBHOOK_SECRET:
        problem = "cannot be called: the server has no ORCH_WEBHOOK_SECRET to sign webhooks with"
    else:
        try:
            check(url)
            return url
        except Refused as exc:
            problem = f"is refused: {exc}"
    raise ValidationError({"callback_url": [f"callback_url {problem}"]})


# --- What is sent ------------------------------------------------------------------------


def signature(body: bytes, secret: str | None = None) -> str:
    """The X-Orchestrator-Signature of `body`: its HMAC-SHA256 under ORCH_WEBHOOK_SECRET."""
    key = (secret if secret is not None else settings.ORCH_WEBHOOK_SECRET).encode()
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _body(delivery_id, workflow: Workflow, row: Transition) -> str:
    # A workflow retried since its failure no longer holds that failure: the audit row does.
    current = workflow.last_seq == row.seq
    finished_at = workflow.finished_at if current and workflow.finished_at else row.created_at
    error = workflow.error if current else row.data.get("error", "")
    payload = {
        "delivery": str(delivery_id),
        "workflow": str(workflow.pk),
        "name": workflow.name,
        "state": row.target,
        "seq": row.seq,
        "event": row.event,
        "finished_at": finished_at.isoformat(),
        "error": error or None,
    }
    return json.dumps(payload, separators=(",", ":"))


def _delivery(workflow_id, seq: int) -> WebhookDelivery | None:
    """The delivery of the workflow's transition `seq`, made on the first attempt; None
    when the workflow (or the transition) is gone."""
    existing = WebhookDelivery.objects.filter(workflow_id=workflow_id, seq=seq).first()
    if existing:
        return existing
    workflow = Workflow.objects.filter(pk=workflow_id).first()
    row = Transition.objects.filter(workflow_id=workflow_id, seq=seq).first()
    if workflow is None or row is None or not workflow.callback_url:
        return None
    delivery = WebhookDelivery(workflow=workflow, seq=seq, event=row.event, url=workflow.callback_url)
    delivery.body = _body(delivery.pk, workflow, row)
    try:
        with transaction.atomic():
            delivery.save(force_insert=True)
    except IntegrityError:  # another delivery of the same job made it first
        return WebhookDelivery.objects.filter(workflow_id=workflow_id, seq=seq).first()
    return delivery


# --- Sending -------------------------------------------------------------------------------


@dataclass
class Answer:
    status_code: int | None = None
    error: str = ""
    retry: bool = False  # worth another attempt

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _connection(target: Target, timeout: float) -> http.client.HTTPConnection:
    parts = target.parts
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=timeout)

    # To the address that was checked, not to what the name resolves to a moment later
    # (DNS rebinding); TLS still checks the certificate against the host name.
    def connect(address, timeout=None, source_address=None):
        return socket.create_connection((target.address, address[1]), timeout, source_address)

    connection._create_connection = connect
    return connection


def post(url: str, body: str, delivery_id) -> Answer:
    """One POST of `body` to `url`, checked first. Redirects are not followed."""
    try:
        target = check(url)
    except Refused as exc:
        return Answer(error=f"refused: {exc}")
    data = body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "workflow-orchestrator-webhooks",
        SIGNATURE_HEADER: signature(data),
        DELIVERY_HEADER: str(delivery_id),
    }
    path = target.parts.path or "/"
    if target.parts.query:
        path += f"?{target.parts.query}"
    connection = _connection(target, settings.ORCH_WEBHOOK_TIMEOUT)
    try:
        connection.request("POST", path, body=data, headers=headers)
        response = connection.getresponse()
        response.read(READ_LIMIT)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(error=f"{type(exc).__name__}: {exc}", retry=True)
    finally:
        connection.close()
    status = response.status
    retry = status >= 500 or status in RETRIED_STATUSES
    error = "" if 200 <= status < 300 else f"answered {status} {response.reason}"
    return Answer(status, error, retry)


def backoff(attempt: int) -> float:
    """Seconds to wait after attempt `attempt` failed."""
    return min(settings.ORCH_WEBHOOK_BACKOFF * 2 ** (attempt - 1), settings.ORCH_WEBHOOK_BACKOFF_MAX)


def deliver(workflow_id, seq: int, attempt: int) -> Answer | None:
    """Attempt `attempt` of the webhook for the workflow's transition `seq`: claimed first
    (None when another delivery of the job holds it, or it was made already), then sent
    and recorded, and the next attempt queued when this one is worth repeating."""
    delivery = _delivery(workflow_id, seq) if attempt == 1 else None
    delivery = delivery or WebhookDelivery.objects.filter(workflow_id=workflow_id, seq=seq).first()
    if delivery is None:
        return None
    claimed = WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.PENDING, attempts=attempt - 1).update(
        status=Status.SENDING, attempts=attempt
    )
    if claimed != 1:
        return None
    started_at, began = timezone.now(), time.monotonic()
    answer = post(delivery.url, delivery.body, delivery.pk)
    _record(delivery, attempt, answer, started_at, time.monotonic() - began)
    return answer


def _record(delivery: WebhookDelivery, attempt: int, answer: Answer, started_at, duration: float) -> None:
    from .services import _enqueue  # the engine's way of sending jobs with a change

    again = answer.retry and attempt < settings.ORCH_WEBHOOK_MAX_ATTEMPTS
    status = Status.DELIVERED if answer.delivered else Status.PENDING if again else Status.FAILED
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=attempt,
            status_code=answer.status_code,
            error=answer.error,
            started_at=started_at,
            duration=duration,
        )
        delivered_at = timezone.now() if answer.delivered else None
        WebhookDelivery.objects.filter(pk=delivery.pk).update(status=status, delivered_at=delivered_at)
        if again:
            eta = timezone.now() + timedelta(seconds=backoff(attempt))
            _enqueue([queue.webhook_job(delivery.workflow_id, delivery.seq, attempt + 1, eta)])
    if status == Status.FAILED:
        logger.warning("webhook %s gave up after attempt %d: %s", delivery.pk, attempt, answer.error)
