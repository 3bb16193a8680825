"""django-q2 brokers that can hold a job back until a given time, and take back jobs a
stopping cluster took but did not run.

Step retries wait out an exponential backoff. Rather than tie up a worker sleeping, or
wait for django-q2's scheduler (which looks at its schedules every 30 s), the job goes
to the broker with a due time: the ORM broker already skips rows whose `lock` lies in
the future, and the Redis broker keeps due times in a sorted set beside its list.

`give_back(taken)` takes jobs as `dequeue` returned them, `(ack_id, payload)` pairs, and
makes them due again at once, for any cluster (see workflow_orchestrator.shutdown).
"""

import time
from datetime import datetime
from math import inf

from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf
from django_q.models import OrmQ


class OrmBroker(ORM):
    # An empty queue is looked at every ORCH_POLL seconds, but for a second after jobs
    # were found, ten times as often: a workflow's next job is usually queued within
    # milliseconds of the last one, and a pusher asleep for a whole poll stalls every
    # worker. An idle cluster still polls every ORCH_POLL.
    busy_seconds = 1.0
    busy_poll_fraction = 0.1

    def dequeue(self):
        """django-q2's ORM dequeue, but for the pause when the queue is empty."""
        jobs = []
        for job in self.get_connection().filter(key=self.list_key, lock__lt=timezone.now())[: Conf.BULK]:
            # Zero rows updated: another cluster took the job first.
            if self.get_connection().filter(id=job.id, lock=job.lock).update(lock=self.timeout(job)):
                jobs.append((job.pk, job.payload))
        if jobs:
            self._found_at = time.monotonic()
            return jobs
        busy = time.monotonic() - getattr(self, "_found_at", -inf) < self.busy_seconds
        time.sleep(Conf.POLL * (self.busy_poll_fraction if busy else 1))
        return None

    def give_back(self, taken: list[tuple[int, str]]) -> None:
        """The rows stay where they are; only the lock that kept every cluster off them
        for `retry` seconds is lifted."""
        if taken:
            self.get_connection().filter(pk__in=[ack_id for ack_id, _ in taken]).update(lock=timezone.now())

    def enqueue_many(self, packages: list[str], eta: datetime | None = None) -> None:
        lock = eta or timezone.now()
        key = self.list_key
        self.get_connection().bulk_create([OrmQ(key=key, payload=package, lock=lock) for package in packages])

    def delayed_size(self) -> int:
        return self.get_connection().filter(key=self.list_key, lock__gt=timezone.now()).count()

    def holds_at_least(self, count: int) -> bool:
        """Whether at least `count` jobs are due and not taken: a look at `count` rows at
        most, where counting them all would read a backlog whole."""
        due = self.get_connection().filter(key=self.list_key, lock__lte=timezone.now())
        return len(due.values_list("id", flat=True)[:count]) >= count

    def get_stats(self, pattern: str) -> list | None:
        """Cluster statistics from the cache. django-q2's version removes expired keys from
        the list it is iterating over, which skips the key after each one removed: right
        after a cluster stopped, a live cluster would go unreported."""
        if not self.cache:
            return None
        keys = self.cache.get(Conf.Q_STAT) or []
        found = self.cache.get_many(keys)
        live = [key for key in keys if found.get(key)]
        if live != keys:
            self.cache.set(Conf.Q_STAT, live, None)
        return [found[key] for key in live]


# Moves the jobs that are due from the sorted set to the list, atomically, so that two
# clusters never both move one job; returns the due time of the next job still waiting.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
for _, job in ipairs(due) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('RPUSH', KEYS[2], job)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then return nxt[2] end
return false
"""


class RedisBroker(Redis):
    # How long one dequeue may block waiting for a job when nothing is delayed.
    max_block = 1.0

    @property
    def delayed_key(self) -> str:
        return f"{self.list_key}:delayed"

    def _promote(self, **kwargs):
        # Built on first use: django-q2 hands brokers to its processes by pickling
        # them, and unpickling restores only the list key and the connection.
        if getattr(self, "_promote_script", None) is None:
            self._promote_script = self.connection.register_script(_PROMOTE)
        return self._promote_script(**kwargs)

    def enqueue_many(self, packages: list[str], eta: datetime | None = None) -> None:
        if not packages:
            return
        if eta is None or eta <= timezone.now():
            self.connection.rpush(self.list_key, *packages)
        else:
            due = eta.timestamp()
            self.connection.zadd(self.delayed_key, {package: due for package in packages})

    def give_back(self, taken: list[tuple[None, str]]) -> None:
        """Popped jobs go back to the head of the list, in the order they were taken: they
        were due before anything still waiting."""
        if taken:
            self.connection.lpush(self.list_key, *reversed([payload for _, payload in taken]))

    def dequeue(self):
        now = time.time()
        next_due = self._promote(keys=[self.delayed_key, self.list_key], args=[now])
        block = self.max_block if next_due is None else min(self.max_block, max(float(next_due) - now, 0.01))
        job = self.connection.blpop(self.list_key, block)
        if job:
            return [(None, job[1])]
        return None

    def delayed_size(self) -> int:
        return self.connection.zcard(self.delayed_key)

    def holds_at_least(self, count: int) -> bool:
        """Whether at least `count` jobs are due and not taken (the list's length)."""
        return self.connection.llen(self.list_key) >= count

    def purge_queue(self):
        self.connection.delete(self.delayed_key)
        return super().purge_queue()

    def delete_queue(self):
        self.connection.delete(self.delayed_key)
        return super().delete_queue()
