import contextlib
import os
import pydoc
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext  # noqa: F401  (re-exported for test modules)
from django_q.signing import SignedPackage
from playwright.sync_api import sync_playwright

from workflow_orchestrator import jobs, queue, services
from workflow_orchestrator.models import Actor, Task, Workflow
from workflow_orchestrator.registry import task_type

ROOT = Path(__file__).resolve().parent.parent


# --- Which tests run on both databases -------------------------------------------------

# The engine's tests: what they check depends on the database (its SQL, its locks, its
# transactions, what it stores or refuses), so `make test` runs them on PostgreSQL + Redis as
# well as on SQLite, and CI with it. Every other module runs once, on SQLite: what it checks
# (the admin's pages, the docs, the browser, serving, settings, the schema's contract, the
# install) is the same on any database. A new module that exercises the engine is listed
# here deliberately: it gets the `engine` marker (pyproject.toml) from this list.
ENGINE_MODULES = {
    "test_api",
    "test_attempts",
    "test_audit",
    "test_broken_chains",
    "test_brokers",
    "test_bulk",
    "test_chaos",
    "test_checkpoint",
    "test_commands",
    "test_connections",
    "test_contract",
    "test_dependencies",
    "test_labels",
    "test_max_parallel",
    "test_edges",
    "test_flow_control",
    "test_flow_surface",
    "test_edges_forms",
    "test_graceful_stop",
    "test_spread",
    "test_waits",
    "test_approvals",
    "test_versions",
    "test_heartbeat",
    "test_holds",
    "test_hot_path",
    "test_integration",
    "test_invariants",
    "test_jobs",
    "test_metrics",
    "test_outages",
    "test_outcomes",
    "test_pause",
    "test_races",
    "test_rules",
    "test_schedules",
    "test_schedules_api",
    "test_services",
    "test_signals",
    "test_timeouts",
    "test_waiting",
    "test_webhooks",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem in ENGINE_MODULES:
            item.add_marker(pytest.mark.engine)


def alive_processes(*, pgid: int | None = None, sid: int | None = None) -> list[int]:
    """The processes of a process group (`pgid`) or session (`sid`) that still run: a
    zombie has ended, and a process that ends while we look is not counted."""
    alive = []
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if pgid is not None and os.getpgid(process.pid) != pgid:
                continue
            if sid is not None and os.getsid(process.pid) != sid:
                continue
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
        alive.append(process.pid)
    return alive


# Task types the tests need beyond the built-in ones.


@task_type("tests.async_echo")
async def async_echo(ctx, params):
    import asyncio

    await asyncio.sleep(0.01)
    return {"async": True, **params}


@task_type("tests.async_slow")
async def async_slow(ctx, params):
    import asyncio

    await asyncio.sleep(params.get("seconds", 5))
    return {"finished": True}


@task_type("tests.swallow")
def swallow_everything(ctx, params):
    """A handler that catches Exception around a long sleep: the timeout must still end it."""
    try:
        time.sleep(params.get("seconds", 5))
    except Exception:
        return {"swallowed": True}
    return {"finished": True}


@task_type("tests.not_json")
def not_json(ctx, params):
    return {"when": object()}


class Engine:
    """Runs the engine's jobs in the test process, through the real broker.

    Services enqueue jobs on commit: `call` runs a service with its on-commit callbacks
    executed, and `drain` takes jobs off the broker and runs their job functions the way
    a worker does, until no job is due (waiting up to `wait` seconds for delayed ones).
    """

    def __init__(self, capture):
        self.capture = capture
        self.broker = queue.broker()
        self.broker.purge_queue()

    def call(self, function, *args, **kwargs):
        with self.capture(execute=True):
            return function(*args, **kwargs)

    def start(self, **kwargs) -> Workflow:
        kwargs.setdefault("name", "test")
        workflow, _ = self.call(services.workflow_create, actor=Actor.SYSTEM, start=True, **kwargs)
        return workflow

    def _take(self) -> list[dict]:
        jobs = []
        for ack_id, payload in self.broker.dequeue() or []:
            jobs.append(SignedPackage.loads(payload))
            self.broker.acknowledge(ack_id)
        return jobs

    def pending(self) -> list[dict]:
        """Take the jobs that are due now off the broker, without running them."""
        jobs = []
        while self.broker.queue_size():
            jobs += self._take()
        return jobs

    def run(self, job: dict, *, tasks: int | None = None):
        """Run `job` as a worker does; with `tasks`, its chain stops after that many tasks
        (jobs.INLINE_LIMIT), where a worker would go on claiming whatever is ready."""
        limit = jobs.INLINE_LIMIT
        jobs.INLINE_LIMIT = tasks or limit
        try:
            with self.capture(execute=True):
                return pydoc.locate(job["func"])(*job["args"], **job["kwargs"])
        finally:
            jobs.INLINE_LIMIT = limit

    def drain(self, *, wait: float = 5.0, limit: int = 500) -> int:
        ran = 0
        deadline = time.monotonic() + wait
        while ran < limit:
            jobs = self.pending()
            if not jobs:
                # Delayed first, then due: a job only ever moves from delayed to due, so
                # one that falls due between the two looks is not missed.
                waiting = self.broker.delayed_size()
                if self.broker.queue_size():
                    continue
                if not waiting or time.monotonic() > deadline:
                    return ran
                jobs = self._take()  # waits for the next delayed job to fall due
            for job in jobs:
                self.run(job)
                ran += 1
        raise AssertionError(f"more than {limit} jobs: is something looping?")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # The default hasher takes most of a second per user on purpose; tests need no such cost.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def engine(db, django_capture_on_commit_callbacks, settings):
    settings.ORCH_RETRY_BACKOFF = 0.02
    return Engine(django_capture_on_commit_callbacks)


def reload(workflow: Workflow) -> Workflow:
    return Workflow.objects.get(pk=workflow.pk)


def events(workflow: Workflow) -> list[str]:
    return list(workflow.transitions.order_by("seq").values_list("event", flat=True))


def task(workflow: Workflow, name: str) -> Task:
    return workflow.tasks.get(name=name)


# --- A real cluster, for integration tests ---------------------------------------------


def database_url() -> str:
    """The URL of the test database, for processes started by the tests."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
        "LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({key: str(value) for key, value in extra.items()})
    return env


class Cluster:
    def __init__(self, tmp_path: Path, **env):
        self.log_path = tmp_path / f"qcluster-{time.monotonic_ns()}.log"
        self.env = child_env(**{"ORCH_WORKERS": 2, **env})
        self.process = None

    def start(self) -> "Cluster":
        self.log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # SIGTERM to the cluster's main process only: it stops its own workers.
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        if self.process:
            with contextlib.suppress(ProcessLookupError):  # nothing of the cluster may outlive the test
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def cluster(transactional_db, tmp_path):
    queue.broker().purge_queue()
    started = []

    def start(**env) -> Cluster:
        started.append(Cluster(tmp_path, **env).start())
        return started[-1]

    yield start
    for running in started:
        running.stop()


def wait_for(predicate, timeout: float, message: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {message}")


# --- A webhook receiver on loopback ----------------------------------------------------

WEBHOOK_SECRET = "webhook-test-secret"


class Receiver:
    """An HTTP server in a thread that records each POST and answers with the next of
    `answers` (200 once they run out); while `hold` is set, it keeps each request waiting
    until `release` is (`arrived` says one came)."""

    def __init__(self):
        self.requests = []
        self.answers = []
        self.hold, self.release, self.arrived = threading.Event(), threading.Event(), threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                receiver.arrived.set()
                if receiver.hold.is_set():
                    receiver.release.wait(60)
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.url = f"{self.base}/hooks/orchestrator?source=test"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks(settings):
    settings.ORCH_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.ORCH_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.ORCH_WEBHOOK_BACKOFF = 0.01
    settings.ORCH_WEBHOOK_TIMEOUT = 5
    return settings


@pytest.fixture
def receiver(hooks):
    running = Receiver()
    yield running
    running.stop()


# The browser tests' fixtures (their helpers are in tests/browser.py).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]  # fmt: skip
SCREENSHOTS = ROOT / "docs" / "img" if os.environ.get("ORCH_SCREENSHOTS") == "1" else None
PASSWORD = "browser-test-password"


@pytest.fixture(scope="module")
def allow_the_orm_beside_playwright():
    """playwright's sync API runs an event loop in the test thread; Django's ORM refuses to run
    in a thread with a running loop unless told it may (these tests wait on the browser, never
    on both at once)."""
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if before is None:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture(scope="module")
def browser(allow_the_orm_beside_playwright):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server, django_user_model):
    """A logged-in admin page: a superuser signs in through the admin's login form."""
    django_user_model.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto("/admin/")
    page.locator("#id_username").wait_for()
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.locator("#user-tools").filter(has_text="admin").wait_for()
    yield page
    context.close()
