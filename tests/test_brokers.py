from collections import Counter
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from django_q.conf import Conf
from django_q.signing import SignedPackage

from workflow_orchestrator import queue
from workflow_orchestrator.brokers import OrmBroker, RedisBroker


@pytest.fixture(params=["orm", "redis"])
def broker(request, db):
    """Each of the project's brokers, empty. Redis is there only where ORCH_BROKER=redis
    selects it (CI's second run); the ORM broker works on any database."""
    if request.param == "redis" and not settings.Q_CLUSTER.get("redis"):
        pytest.skip("the Redis broker is tested where ORCH_BROKER=redis selects it")
    broker = RedisBroker() if request.param == "redis" else OrmBroker()
    broker.purge_queue()
    yield broker
    broker.purge_queue()


def send(broker, *names: str) -> None:
    broker.enqueue_many([queue.package(queue.Job("math.floor", (1.5,), name)) for name in names])


def take(broker, count: int) -> list[tuple]:
    """Take `count` jobs off the broker, as a cluster's pusher does, without running them."""
    taken = []
    while len(taken) < count:
        taken += broker.dequeue() or []
    return taken


def names(taken: list[tuple]) -> list[str]:
    return [SignedPackage.loads(payload)["name"] for _, payload in taken]


def test_jobs_given_back_are_due_again_at_once_each_once(broker):
    """What a stopping cluster took but did not run: without give_back, Redis would have
    lost these jobs and the ORM broker would keep them from every cluster for its
    `retry` seconds."""
    send(broker, "first", "second", "third")
    taken = take(broker, 2)
    broker.give_back(taken)
    assert broker.queue_size() == 3
    assert Counter(names(take(broker, 3))) == Counter(["first", "second", "third"])
    assert broker.queue_size() == 0 and broker.dequeue() is None, "each job is given back once"


def test_giving_back_nothing_changes_nothing(broker):
    send(broker, "waiting")
    broker.give_back([])
    assert names(take(broker, 1)) == ["waiting"]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)  # the ORM broker takes due rows in no set order
def test_jobs_given_back_to_redis_come_before_those_that_waited(broker):
    """They were due before the others: the next cluster runs them first, in their order."""
    send(broker, "first", "second", "third", "fourth")
    broker.give_back(take(broker, 2))
    assert names(take(broker, 4)) == ["first", "second", "third", "fourth"]


def test_cluster_stats_survive_a_stale_key_before_a_live_one(db):
    broker = OrmBroker()
    cache.set(Conf.Q_STAT, ["stale-cluster", "live-cluster"], None)  # the first cluster stopped long ago
    cache.set("live-cluster", "its signed statistics", 30)
    assert broker.get_stats(f"{Conf.Q_STAT}:*") == ["its signed statistics"]
    assert cache.get(Conf.Q_STAT) == ["live-cluster"]


def test_the_orm_broker_looks_again_sooner_while_jobs_keep_coming(db, monkeypatch):
    """A workflow's next job is queued within milliseconds of the last: a pusher that has
    just found jobs must not sleep a whole poll before looking again; an idle one must."""
    from workflow_orchestrator import brokers, queue

    pauses = []
    monkeypatch.setattr(brokers.time, "sleep", pauses.append)
    broker = OrmBroker()
    broker.purge_queue()
    assert broker.dequeue() is None  # idle: a whole poll
    broker.enqueue_many([queue.package(queue.Job("math.floor", (1.5,), "job"))])
    assert len(broker.dequeue()) == 1
    assert broker.dequeue() is None  # just found one: a fraction of a poll
    monkeypatch.setattr(broker, "_found_at", brokers.time.monotonic() - 5)
    assert broker.dequeue() is None  # nothing for a while: a whole poll again
    assert pauses[0] == pauses[2] == Conf.POLL and pauses[1] <= Conf.POLL / 4


@pytest.mark.django_db(transaction=True)
def test_holds_at_least_counts_only_due_jobs_not_taken():
    """What a busy worker asks before it sends deliveries (queue.needed)."""
    broker = queue.broker()
    broker.purge_queue()
    assert not broker.holds_at_least(1)
    queue.enqueue(queue.deliveries(2))
    queue.enqueue(queue.deliveries(3, eta=timezone.now() + timedelta(hours=1)))
    assert broker.holds_at_least(2) and not broker.holds_at_least(3)  # the delayed ones are not due
    broker.dequeue()  # a cluster takes one
    assert broker.holds_at_least(1) and not broker.holds_at_least(2)
    broker.purge_queue()
