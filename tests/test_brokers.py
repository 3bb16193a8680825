from django.core.cache import cache
from django_q.conf import Conf

from workflows.brokers import OrmBroker


def test_cluster_stats_survive_a_stale_key_before_a_live_one(db):
    broker = OrmBroker()
    cache.set(Conf.Q_STAT, ["stale-cluster", "live-cluster"], None)  # the first cluster stopped long ago
    cache.set("live-cluster", "its signed statistics", 30)
    assert broker.get_stats(f"{Conf.Q_STAT}:*") == ["its signed statistics"]
    assert cache.get(Conf.Q_STAT) == ["live-cluster"]


def test_the_orm_broker_looks_again_sooner_while_jobs_keep_coming(db, monkeypatch):
    """A workflow's next job is queued within milliseconds of the last: a pusher that has
    just found jobs must not sleep a whole poll before looking again; an idle one must."""
    from workflows import brokers, queue

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
