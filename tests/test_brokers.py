from django.core.cache import cache
from django_q.conf import Conf

from workflows.brokers import OrmBroker


def test_cluster_stats_survive_a_stale_key_before_a_live_one(db):
    broker = OrmBroker()
    cache.set(Conf.Q_STAT, ["stale-cluster", "live-cluster"], None)  # the first cluster stopped long ago
    cache.set("live-cluster", "its signed statistics", 30)
    assert broker.get_stats(f"{Conf.Q_STAT}:*") == ["its signed statistics"]
    assert cache.get(Conf.Q_STAT) == ["live-cluster"]
