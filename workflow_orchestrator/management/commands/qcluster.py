from django_q.management.commands import qcluster
from django_q.signals import post_spawn

from workflow_orchestrator import cluster, shutdown


class Command(qcluster.Command):
    """django-q2's `qcluster`, made to take a job off the broker only for a free worker,
    to stop in order when SIGTERM or SIGINT reaches all of its processes at once, and to
    give back to the broker the jobs it took but did not run (see workflow_orchestrator.cluster
    and workflow_orchestrator.shutdown). It takes the place of django-q2's command because
    `workflow_orchestrator` comes before `django_q` in INSTALLED_APPS."""

    help = (
        "Starts a worker cluster. SIGTERM or SIGINT, to the main process or to all of the cluster's "
        "processes, stops it: running tasks finish, or are handed back when their workers got SIGTERM too."
    )

    def handle(self, *args, **options):
        post_spawn.connect(shutdown.worker_started)
        # The sentinel forked meanwhile, and every process it starts, inherit the block;
        # this process gets a signal that arrived during start-up once the cluster runs.
        with shutdown.stop_signals_blocked(), cluster.sentinel():
            super().handle(*args, **options)
