"""Concurrent requests against one workflow, each on its own database connection."""

import threading
from collections import Counter

import pytest
from django.contrib.auth.models import User
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Task, Transition, Workflow

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def token(transactional_db):
    user = User.objects.create_user("racer")
    return Token.objects.create(user=user).key


def concurrently(count: int, request) -> Counter:
    """Run `request(client)` from `count` threads released at once; count the status codes."""
    barrier = threading.Barrier(count)
    codes: list[int] = []
    errors: list[BaseException] = []

    def worker():
        try:
            client = APIClient()
            barrier.wait(timeout=30)
            codes.append(request(client).status_code)
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors, errors
    return Counter(codes)


def auth(token):
    return {"HTTP_AUTHORIZATION": f"Token {token}"}


def test_thirty_concurrent_next_advance_a_manual_workflow_once(token):
    user = User.objects.get(username="racer")
    workflow, _ = services.workflow_create(name="m", mode="manual", tasks=[{"type": "noop"}], actor=Actor.api(user))
    codes = concurrently(30, lambda c: c.post(f"/workflow/{workflow.pk}/next", **auth(token)))
    assert codes == Counter({202: 1, 409: 29})
    assert Workflow.objects.get(pk=workflow.pk).state == State.PREPARE
    assert Transition.objects.filter(workflow=workflow).count() == 1


def test_twenty_concurrent_retries_of_a_failed_workflow_retry_it_once(token):
    user = User.objects.get(username="racer")
    workflow, _ = services.workflow_create(
        name="r", tasks=[{"type": "fail", "max_attempts": 1}], actor=Actor.api(user), start=True
    )
    prepare = Task.objects.get(workflow=workflow, name="prepare")
    for attempt in range(1, prepare.max_attempts + 1):  # every attempt of PREPARE fails
        assert services.task_claim(prepare.pk, attempt, worker="test")
        services.task_finished(prepare.pk, attempt, error="boom")
    assert Workflow.objects.get(pk=workflow.pk).state == State.FAILED
    codes = concurrently(20, lambda c: c.post(f"/workflow/{workflow.pk}/retry", **auth(token)))
    assert codes == Counter({202: 1, 409: 19})
    workflow = Workflow.objects.get(pk=workflow.pk)
    assert workflow.retries == 1
    assert list(workflow.transitions.values_list("event", flat=True)) == ["start", "fail", "retry"]


def test_twenty_concurrent_starts_with_one_idempotency_key_make_one_workflow(token):
    body = {"name": "once", "tasks": [{"type": "noop"}], "idempotency_key": "race-1"}
    codes = concurrently(20, lambda c: c.post("/workflow/start", body, format="json", **auth(token)))
    assert codes == Counter({201: 1, 200: 19})
    assert Workflow.objects.count() == 1
    assert Transition.objects.count() == 1
