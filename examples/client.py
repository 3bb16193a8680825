"""A small client of the orchestrator's REST API, using only the standard library.

It runs five steps against a server with a running worker cluster (`make run` starts
both) and prints a line per step:

  a) start a workflow (echo + sleep) and follow its status until it is COMPLETE;
  b) start a manual-mode workflow and step it with `next` until it is COMPLETE;
  c) start a workflow whose only task fails once, wait for FAILED, retry it;
  d) start a 30 s sleep, wait for EXECUTE, cancel it;
  e) read the cluster's statistics.

It exits 0 when every step ended as expected, 1 otherwise.

Every API request needs a token. Create one (or show the existing one) for a user with

    python manage.py drf_create_token USER

then run

    python examples/client.py --url http://127.0.0.1:8000 --token KEY

The token can also come from the ORCH_TOKEN environment variable, the URL from ORCH_URL.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

TERMINAL = {"COMPLETE", "FAILED", "CANCELLED"}
POLL = 0.2  # seconds between two looks at a workflow's status


class ApiError(Exception):
    """The server answered with an HTTP error status."""

    def __init__(self, method: str, path: str, status: int, text: str):
        self.status = status
        try:
            self.body = json.loads(text)
        except ValueError:
            self.body = text
        super().__init__(f"{method} {path} answered HTTP {status}: {text[:2000]}")


class StepFailed(Exception):
    """A step did not end as expected."""


class Client:
    def __init__(self, url: str, token: str, timeout: float):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Token {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(text) if text else None

    def start(self, name: str, **body) -> dict:
        workflow = self.call("POST", "/workflow/start", {"name": name, **body})
        print(f"  started {name!r}: id {workflow['id']}, state {workflow['state']}")
        return workflow

    def status(self, workflow_id: str) -> dict:
        return self.call("GET", f"/execution/workflows/{workflow_id}/status")

    def wait(self, workflow_id: str, until=TERMINAL) -> dict:
        """Poll the status until the state is in `until` (or terminal), printing changes."""
        deadline = time.monotonic() + self.timeout
        last = None
        while True:
            status = self.status(workflow_id)
            seen = (status["state"], status["progress"]["done"])
            if seen != last:
                done, total = status["progress"]["done"], status["progress"]["total"]
                print(f"    {status['state']:<9} {done}/{total} tasks done")
                last = seen
            if status["state"] in until or status["state"] in TERMINAL:
                return status
            if time.monotonic() > deadline:
                raise StepFailed(f"workflow {workflow_id} still {status['state']} after {self.timeout} s")
            time.sleep(POLL)


def expect(status: dict, state: str) -> None:
    if status["state"] != state:
        raise StepFailed(f"expected {state}, got {status['state']} (error: {status.get('error') or '-'})")


def step_auto(api: Client) -> None:
    tasks = [{"type": "echo", "params": {"hello": "world"}}, {"type": "sleep", "params": {"seconds": 0.2}}]
    workflow = api.start("client-auto", tasks=tasks)
    expect(api.wait(workflow["id"]), "COMPLETE")


def step_manual(api: Client) -> None:
    workflow = api.start("client-manual", mode="manual", tasks=[{"type": "echo", "params": {"step": 1}}])
    deadline = time.monotonic() + api.timeout
    state, waited = workflow["state"], False
    while state != "COMPLETE":
        if state in TERMINAL:
            raise StepFailed(f"the manual workflow ended {state}")
        if time.monotonic() > deadline:
            raise StepFailed(f"the manual workflow is still {state} after {api.timeout} s")
        try:
            state = api.call("POST", f"/workflow/{workflow['id']}/next")["state"]
            print(f"    next -> {state}")
            waited = False
        except ApiError as exc:
            if exc.status != 409 or not isinstance(exc.body, dict):
                raise
            # 409: not allowed now, usually because the phase's work is still running.
            if not waited:
                print(f"    409 in {exc.body['state']}: {exc.body['detail']}; waiting")
            state, waited = exc.body["state"], True
            time.sleep(POLL)


def step_retry(api: Client) -> None:
    tasks = [{"type": "fail", "params": {"times": 1}, "max_attempts": 1}]
    workflow = api.start("client-retry", tasks=tasks)
    expect(api.wait(workflow["id"]), "FAILED")
    retried = api.call("POST", f"/workflow/{workflow['id']}/retry")
    print(f"    retry -> {retried['state']} (retries: {retried['retries']})")
    expect(api.wait(workflow["id"]), "COMPLETE")


def step_cancel(api: Client) -> None:
    workflow = api.start("client-cancel", tasks=[{"type": "sleep", "params": {"seconds": 30}}])
    expect(api.wait(workflow["id"], until={"EXECUTE"}), "EXECUTE")
    cancelled = api.call("POST", f"/execution/workflows/{workflow['id']}/cancel", {"reason": "client example"})
    print(f"    cancel -> {cancelled['state']}")
    expect(api.wait(workflow["id"]), "CANCELLED")


def step_stats(api: Client) -> None:
    stats = api.call("GET", "/execution/stats")
    counts = ", ".join(f"{state} {n}" for state, n in stats["workflows_by_state"].items() if n) or "none"
    print(f"    workflows by state: {counts}")
    print(f"    queue depth: {stats['queue_depth']} (delayed: {stats['queue_delayed']})")
    print(f"    workers: {stats['workers']} in {len(stats['clusters'])} cluster(s)")


STEPS = [
    ("a) start and follow a workflow", step_auto),
    ("b) step a manual workflow with next", step_manual),
    ("c) retry a failed workflow", step_retry),
    ("d) cancel a running workflow", step_cancel),
    ("e) cluster statistics", step_stats),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("ORCH_URL", "http://127.0.0.1:8000"), help="server URL")
    parser.add_argument("--token", default=os.environ.get("ORCH_TOKEN"), help="API token (or set ORCH_TOKEN)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each state (default 60)")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is needed: --token KEY or ORCH_TOKEN (python manage.py drf_create_token USER)")

    api = Client(args.url, args.token, args.timeout)
    failures = []
    for title, step in STEPS:
        print(title)
        try:
            step(api)
        except (ApiError, StepFailed, urllib.error.URLError, OSError) as exc:
            print(f"  FAILED: {exc}")
            failures.append(title)
        else:
            print("  ok")
    if failures:
        print(f"{len(failures)} of {len(STEPS)} steps failed: {', '.join(t.split(')')[0] for t in failures)}")
        return 1
    print(f"all {len(STEPS)} steps ended as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
