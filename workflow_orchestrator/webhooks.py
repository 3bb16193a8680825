"""Webhooks: a workflow's callback_url is called with a signed POST when it ends (COMPLETE,
FAILED or CANCELLED).

- The change that ends the workflow queues a `deliver_webhook` job with the change itself
  (services.transitions, queue.send_with_change): the URL comes back from the change's statement, so a change that
  ends no workflow costs nothing more.
- Each transition is delivered at most once: one WebhookDelivery per workflow and seq, its
  body built once, and each attempt claimed with a conditional update, so that a job
  delivered twice, or a retry queued twice, sends nothing twice.
- An attempt whose worker died leaves its delivery SENDING: recovery takes it back once
  it has been SENDING longer than any attempt takes (`take_back_stalled`), and queues the
  next attempt (a new attempt number: the receiver may then get the delivery twice, and
  dedupes by its id), or records it FAILED when it was the last.
- Only hosts ORCH_WEBHOOK_ALLOWED_HOSTS allows are called, and an address that is not
  public (private, loopback, link-local, reserved) only when its host is named there
  exactly: checked when the URL is given and again before every attempt (DNS may have
  changed), and the request goes to the address that was checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import queue
from .backoff import backoff
from .callbacks import Refused, Target, check
from .conf import app_settings
from .models import Transition, WebhookAttempt, WebhookDelivery, Workflow

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Orchestrator-Signature"
DELIVERY_HEADER = "X-Orchestrator-Delivery"
# Answers worth another attempt besides 5xx: the receiver timed out, or asks to slow down.
# Any other answer (a 4xx says the request itself is refused) is final.
RETRIED_STATUSES = (408, 429)
# Of the receiver's answer, only this much is read (its status is what counts).
READ_LIMIT = 64 * 1024
# Besides its exchange (at most ORCH_WEBHOOK_TIMEOUT), an attempt resolves the host (the
# system's resolver gives up within a minute) and records the answer.
ATTEMPT_MARGIN = timedelta(seconds=120)
Status = WebhookDelivery.Status


# --- What is sent ------------------------------------------------------------------------


def signature(body: bytes, secret: str | None = None) -> str:
    """The X-Orchestrator-Signature of `body`: its HMAC-SHA256 under ORCH_WEBHOOK_SECRET."""
    key = (secret if secret is not None else app_settings.ORCH_WEBHOOK_SECRET).encode()
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


class Deadline:
    """Ends an exchange that lasts longer than `seconds`. The connection's timeout bounds
    each read, so that a receiver answering a byte at a time could otherwise hold an
    attempt as long as it liked."""

    def __init__(self, connection: http.client.HTTPConnection, seconds: float):
        self.connection, self.seconds, self.passed = connection, seconds, False
        self.timer = threading.Timer(seconds, self._cut)
        self.timer.daemon = True

    def _cut(self) -> None:
        self.passed = True
        if self.connection.sock is not None:  # none yet: connecting, which its own timeout bounds
            with contextlib.suppress(OSError):
                self.connection.sock.shutdown(socket.SHUT_RDWR)

    def connect(self) -> None:
        self.connection.connect()
        if self.passed:
            raise TimeoutError(f"timed out after {self.seconds:g} s")

    def __enter__(self) -> Deadline:
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()


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
    connection = _connection(target, app_settings.ORCH_WEBHOOK_TIMEOUT)
    deadline = Deadline(connection, app_settings.ORCH_WEBHOOK_TIMEOUT)
    try:
        with deadline:
            deadline.connect()
            connection.request("POST", path, body=data, headers=headers)
            response = connection.getresponse()
            response.read(READ_LIMIT)
    except (http.client.InvalidURL, UnicodeError) as exc:  # the request itself cannot be written: final
        return Answer(error=f"{type(exc).__name__}: {exc}")
    except (OSError, http.client.HTTPException) as exc:
        error = f"timed out after {deadline.seconds:g} s" if deadline.passed else f"{type(exc).__name__}: {exc}"
        return Answer(error=error, retry=True)
    finally:
        connection.close()
    status = response.status
    retry = status >= 500 or status in RETRIED_STATUSES
    error = "" if 200 <= status < 300 else f"answered {status} {response.reason}"
    return Answer(status, error, retry)


def retry_delay(attempt: int) -> float:
    """Seconds to wait after attempt `attempt` failed: ORCH_WEBHOOK_BACKOFF doubling, at
    most ORCH_WEBHOOK_BACKOFF_MAX, without jitter."""
    return backoff(attempt, base=app_settings.ORCH_WEBHOOK_BACKOFF, cap=app_settings.ORCH_WEBHOOK_BACKOFF_MAX)


def deliver(workflow_id, seq: int, attempt: int) -> Answer | None:
    """Attempt `attempt` of the webhook for the workflow's transition `seq`: claimed first
    (None when another delivery of the job holds it, or it was made already), then sent
    and recorded, and the next attempt queued when this one is worth repeating."""
    delivery = _delivery(workflow_id, seq) if attempt == 1 else None
    delivery = delivery or WebhookDelivery.objects.filter(workflow_id=workflow_id, seq=seq).first()
    if delivery is None:
        return None
    started_at, began = timezone.now(), time.monotonic()
    claimed = WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.PENDING, attempts=attempt - 1).update(
        status=Status.SENDING, attempts=attempt, sending_since=started_at
    )
    if claimed != 1:
        return None
    answer = post(delivery.url, delivery.body, delivery.pk)
    if not _record(delivery, attempt, answer, started_at, time.monotonic() - began):
        # Recovery took this attempt back (this worker was stopped for longer than any
        # attempt takes) and queued the next one, which counts instead.
        logger.warning("webhook %s: attempt %d ended after it was taken back: not recorded", delivery.pk, attempt)
    return answer


def _record(delivery: WebhookDelivery, attempt: int, answer: Answer, started_at, duration: float) -> bool:
    """Record how attempt `attempt` ended, and queue the next one when it is worth
    repeating; False when the attempt is no longer under way (taken back)."""
    again = answer.retry and attempt < app_settings.ORCH_WEBHOOK_MAX_ATTEMPTS
    status = Status.DELIVERED if answer.delivered else Status.PENDING if again else Status.FAILED
    with transaction.atomic():
        recorded = WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.SENDING, attempts=attempt).update(
            status=status, delivered_at=timezone.now() if answer.delivered else None, sending_since=None
        )
        if not recorded:
            return False
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=attempt,
            status_code=answer.status_code,
            error=answer.error,
            started_at=started_at,
            duration=duration,
        )
        if again:
            eta = timezone.now() + timedelta(seconds=retry_delay(attempt))
            queue.send_with_change([queue.webhook_job(delivery.workflow_id, delivery.seq, attempt + 1, eta)])
    if status == Status.FAILED:
        logger.warning("webhook %s gave up after attempt %d: %s", delivery.pk, attempt, answer.error)
    return True


# --- Recovery -------------------------------------------------------------------------------


def sending_timeout() -> timedelta:
    """How long an attempt may be under way (SENDING) before recovery takes it back:
    longer than any attempt takes (see Deadline and ATTEMPT_MARGIN)."""
    return timedelta(seconds=app_settings.ORCH_WEBHOOK_TIMEOUT) + ATTEMPT_MARGIN


def take_back_stalled(now: datetime) -> int:
    """Take back the attempts under way since before `now` minus sending_timeout(): their
    worker died during them. Each is recorded as unanswered, and the next attempt queued
    (or the delivery FAILED when it was the last). Returns how many were taken back."""
    stalled = WebhookDelivery.objects.filter(sending_since__lt=now - sending_timeout()).only(
        "pk", "workflow_id", "seq", "attempts", "sending_since"
    )
    taken_back = 0
    for delivery in list(stalled):
        lasted = (now - delivery.sending_since).total_seconds()
        lost = Answer(error=f"no answer recorded after {lasted:.0f} s: taken back (its worker stopped)", retry=True)
        # A worker that records its answer meanwhile wins, and this changes nothing.
        if _record(delivery, delivery.attempts, lost, delivery.sending_since, lasted):
            taken_back += 1
            logger.warning("webhook %s: attempt %d taken back after %.0f s", delivery.pk, delivery.attempts, lasted)
    return taken_back
