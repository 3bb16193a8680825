"""`make serve`: gunicorn with DEBUG off, the static files collected and served by WhiteNoise,
many clients at once."""

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from tests.conftest import ROOT, child_env, free_port, wait_for
from workflow_orchestrator.models import Workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CLIENTS = 50
REQUESTS_PER_CLIENT = 20  # of which every fifth is a POST


@dataclass
class Server:
    url: str
    log_path: Path

    def request(self, path: str, *, token: str = "", body: dict | None = None) -> tuple[int, bytes]:
        # As behind the TLS-terminating proxy that production settings expect.
        headers = {"X-Forwarded-Proto": "https"}
        if token:
            headers.update(Authorization=f"Token {token}", Accept="application/json")
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def answers(self) -> bool:
        try:
            return self.request("/docs")[0] == 200
        except OSError:
            return False

    def output(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def served(transactional_db, tmp_path):
    """`make serve` in production settings, against the test database."""
    log_path, port = tmp_path / "serve.log", free_port()
    env = child_env(
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="a-production-like-secret-key-for-the-serving-test-0123456789",
        DJANGO_BEHIND_PROXY="true",
        DJANGO_STATIC_ROOT=tmp_path / "static",
        PORT=port,
        WEB_CONCURRENCY=3,
    )
    with open(log_path, "w") as log:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", log_path)
    try:
        wait_for(server.answers, 90, "gunicorn to answer")
        yield server
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)  # gunicorn's graceful stop
            try:
                make.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()


def test_gunicorn_answers_fifty_parallel_clients_without_an_error(served):
    user = get_user_model().objects.create_user("loader", password="unused-password-1")
    token = Token.objects.create(user=user).key

    def client(number: int) -> list[str]:
        errors = []
        for i in range(REQUESTS_PER_CLIENT):
            try:
                if i % 5 == 4:
                    status, body = served.request(
                        "/workflows/", token=token, body={"name": f"load-{number}-{i}", "tasks": [{"type": "noop"}]}
                    )
                    expected = 201
                else:
                    status, body = served.request("/workflows/?page_size=5", token=token)
                    expected = 200
                if status != expected:
                    errors.append(f"client {number}, request {i}: {status} {body[:200]!r}")
            except OSError as exc:  # a reset or refused connection, a timeout
                errors.append(f"client {number}, request {i}: {exc!r}")
        return errors

    with ThreadPoolExecutor(CLIENTS) as pool:
        errors = [error for errors in pool.map(client, range(CLIENTS)) for error in errors]
    assert errors == [], f"{len(errors)} errors, the first: {errors[:5]}\n{served.output()[-2000:]}"
    assert Workflow.objects.filter(name__startswith="load-").count() == CLIENTS * REQUESTS_PER_CLIENT // 5
    assert served.output().count("Booting worker") == 3, "gunicorn, with WEB_CONCURRENCY workers"


def assets(html: str, pattern: str) -> list[str]:
    return re.findall(rf'(?:href|src)="(/static/[^"]*{pattern}[^"]*)"', html)


def test_with_debug_off_the_admin_css_and_the_swagger_ui_files_are_served(served):
    status, login = served.request("/admin/login/")
    stylesheets = assets(login.decode(), r"\.css")
    status_docs, docs = served.request("/docs")
    swagger_files = assets(docs.decode(), "swagger-ui")
    assert (status, status_docs) == (200, 200)
    assert "/static/admin/css/base.css" in stylesheets
    assert len(swagger_files) >= 3, docs.decode()  # the CSS, the bundle and the preset
    for path in stylesheets + swagger_files:
        status, body = served.request(path)
        assert status == 200 and body, path
