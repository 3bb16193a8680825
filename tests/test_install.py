"""docs/INSTALL.md, followed on a fresh project: the guide's shell blocks run in order, in
bash, in the project's directory, with a new virtualenv first on PATH. Its install block
builds the wheel from the repository's files and installs it (the dependencies come from
the package index, as a user's would); `django-admin startproject` then makes the project,
to whose settings.py and urls.py the guide's `# settings.py` and `# urls.py` blocks are
appended; its `workflow_tasks.py` block becomes the module of a new app of the project. A
real cluster and a real server run the guide's workflow of that task type to COMPLETE, and
the admin and the API are used as a logged-in user and with a token.

What differs from a reader's run: the clone is a copy of the repository's files; the server
listens on a free port; createsuperuser reads its answers from the environment; the app with
the task type exists before the cluster and the server start, so they need no restart.

Selected with `-m install` (it needs the package index); CI runs it once, on SQLite: the
project is a fresh one, with its own SQLite database, whatever DATABASE_URL says."""

import contextlib
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests import dom
from tests.conftest import ROOT, free_port, wait_for
from tests.test_quickstart import FENCE, Step, guide_steps

pytestmark = [pytest.mark.install, pytest.mark.integration, pytest.mark.timeout(900)]

GUIDE = ROOT / "docs" / "INSTALL.md"
CLONE = "path/to/workflow-orchestrator"
SERVERS = ("python manage.py qcluster", "python manage.py runserver")
PASSWORD = secrets.token_urlsafe(12)


def python_block(text: str, first_line_pattern: str) -> re.Match:
    """The one `python` block whose first line matches, split into that line and the rest."""
    found = [
        match
        for language, body in FENCE.findall(text)
        if language == "python" and (match := re.fullmatch(rf"({first_line_pattern})\n(.*)", body, re.DOTALL))
    ]
    assert len(found) == 1, f"the guide must hold exactly one python block starting with {first_line_pattern}"
    return found[0]


def repository_copy(target: Path) -> Path:
    """The repository's files as a clone has them (tracked and new, nothing ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def project_env(venv: Path, **extra) -> dict:
    """A reader's shell with the project's virtualenv active: nothing of the test's own
    settings (DJANGO_SETTINGS_MODULE, DATABASE_URL, ORCH_*), pip's configuration kept."""
    kept = ("HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE")
    env = {name: value for name, value in os.environ.items() if name in kept or name.startswith("PIP_")}
    others = [entry for entry in os.environ["PATH"].split(os.pathsep) if not entry.startswith(str(ROOT))]
    env.update(PATH=os.pathsep.join([str(venv / "bin"), *others]), VIRTUAL_ENV=str(venv), PYTHONUNBUFFERED="1")
    env.update(DJANGO_SUPERUSER_USERNAME="admin", DJANGO_SUPERUSER_EMAIL="admin@example.com")
    env.update(DJANGO_SUPERUSER_PASSWORD=PASSWORD, **extra)
    return env


class Project:
    def __init__(self, root: Path, clone: Path, env: dict, port: int):
        self.root, self.clone, self.env, self.port = root, clone, env, port
        self.servers: list[tuple[subprocess.Popen, Path]] = []
        self.steps: list[Step] = []  # the guide's steps after the servers start

    def as_run_here(self, commands: str) -> str:
        return (
            commands.replace(CLONE, str(self.clone))
            .replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
            .replace("manage.py createsuperuser", "manage.py createsuperuser --noinput")
            .replace("manage.py runserver", f"manage.py runserver 127.0.0.1:{self.port}")
        )

    def run(self, commands: str, **env) -> str:
        result = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", self.as_run_here(commands)],
            cwd=self.root, env={**self.env, **env}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, f"{commands}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        return result.stdout

    def manage(self, *args: str) -> str:
        return self.run(" ".join(["python", "manage.py", *args]))

    def start(self, commands: str) -> None:
        log_path = self.root / f"server-{len(self.servers)}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {self.as_run_here(commands)}"],
                cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.servers.append((process, log_path))

    def logs(self) -> str:
        return "\n".join(f"--- {path.name} ---\n{path.read_text()[-3000:]}" for _, path in self.servers)

    def stop(self) -> None:
        for process, _ in self.servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self.servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project after the guide's steps up to its first workflow: installed, configured,
    migrated, with its cluster and its server running."""
    tmp = tmp_path_factory.mktemp("install")
    clone = repository_copy(tmp / "workflow-orchestrator")
    guide = GUIDE.read_text()
    steps = guide_steps(guide)
    subprocess.run([sys.executable, "-m", "venv", tmp / "venv"], check=True, timeout=120)
    root = tmp / "project"
    root.mkdir()
    project = Project(root, clone, project_env(tmp / "venv"), free_port())

    install, migrate, *rest = steps
    project.run(install.commands)
    project.run("django-admin startproject hostsite .")
    tasks = python_block(guide, r"# (\w+)/workflow_tasks\.py")
    app = re.fullmatch(r"# (\w+)/workflow_tasks\.py", tasks[1])[1]
    project.run(f"django-admin startapp {app}")
    (root / app / "workflow_tasks.py").write_text(tasks[0])
    with open(root / "hostsite" / "settings.py", "a") as settings:
        settings.write(f"\n# The project's own app.\nINSTALLED_APPS += [{app!r}]\n\n")
        settings.write(python_block(guide, r"# settings\.py")[0])
    with open(root / "hostsite" / "urls.py", "a") as urls:
        urls.write("\n" + python_block(guide, r"# urls\.py")[0])
    project.run(migrate.commands)

    servers = [step for step in rest if step.commands.strip() in SERVERS]
    assert [step.commands.strip() for step in servers] == list(SERVERS), "the guide starts a cluster and a server"
    for step in servers:
        project.start(step.commands.strip())
    project.steps = [step for step in rest if step not in servers]
    try:
        wait_for(lambda: answers(project.url("/admin/login/")), 60, f"the server to answer\n{project.logs()}")
        yield project
    finally:
        project.stop()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def request(url: str, *, opener=None, token: str = "", data: bytes | None = None, headers=None):
    """(status, headers, body) of a request; error statuses are answers too."""
    all_headers = {"Accept": "application/json", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Token {token}"
    call = urllib.request.Request(url, data=data, headers=all_headers)
    try:
        with (opener or urllib.request.build_opener()).open(call, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def token_for(project: Project, username: str) -> str:
    return re.search(r"Generated token (\w+) for user", project.manage("drf_create_token", username))[1]


# --- The distribution ------------------------------------------------------------------------


def test_the_wheel_holds_the_app_with_its_migrations_templates_static_and_sql_files_alone(project):
    (wheel,) = (project.root / "dist").glob("django_workflow_orchestrator-0.1.0-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "workflow_orchestrator",
        "django_workflow_orchestrator-0.1.0.dist-info",
    }
    for expected in [
        "workflow_orchestrator/migrations/0001_initial.py",
        "workflow_orchestrator/templates/admin/workflow_orchestrator/dashboard.html",
        "workflow_orchestrator/templates/rest_framework/orchestrator_api.html",
        "workflow_orchestrator/static/workflow_orchestrator/admin.css",
        "workflow_orchestrator/sql/postgresql.sql",
        "workflow_orchestrator/sql/sqlite.sql",
        "workflow_orchestrator/urls.py",
    ]:
        assert expected in names, expected
    assert not [name for name in names if "bench" in name or "demo" in name or "docs_schema" in name]


def test_the_projects_settings_pass_every_system_check(project):
    assert "System check identified no issues" in project.manage("check")


# --- The guide's first workflow --------------------------------------------------------------


def test_the_guides_workflow_of_the_projects_own_task_type_completes(project):
    (start,) = [step for step in project.steps if "manage.py workflow start" in step.commands]
    assert start.expected, "the guide shows what the command prints"
    output = project.run(start.commands)
    for line in start.expected:
        assert line in output, f"{line!r} not in\n{output}\n{project.logs()}"
    workflow = json.loads(output)
    assert workflow["state"] == "COMPLETE"
    assert [task["type"] for task in workflow["tasks"] if task["phase"] == "EXECUTE"] == ["shop.invoice"]


def test_the_guides_api_call_starts_a_workflow_that_completes(project):
    (call,) = [step for step in project.steps if "curl" in step.commands]
    token = token_for(project, "admin")
    started = json.loads(project.run(call.commands, TOKEN=token))
    assert started["name"] == "api-invoice"

    def state():
        return json.loads(request(project.url(f"/workflow/{started['id']}"), token=token)[2])["state"]

    wait_for(lambda: state() == "COMPLETE", 60, f"the workflow to complete\n{project.logs()}")


# --- The API, with the project's REST_FRAMEWORK unset -----------------------------------------


def test_the_api_asks_for_credentials_and_takes_a_token(project):
    status, headers, _ = request(project.url("/workflows/"))
    assert (status, headers["WWW-Authenticate"]) == (401, "Token")
    status, _, body = request(project.url("/workflows/?ordering=-name&page_size=1"), token=token_for(project, "admin"))
    listing = json.loads(body)
    assert status == 200 and set(listing) == {"count", "next", "previous", "results"}
    assert listing["count"] >= 1 and len(listing["results"]) == 1


def test_the_api_reads_json_only_and_answers_conflicts_with_the_allowed_transitions(project):
    token = token_for(project, "admin")
    status, _, _ = request(project.url("/workflow/start"), token=token, data=b"name=form")
    assert status == 415
    body = json.dumps({"name": "later", "tasks": [{"type": "noop"}]}).encode()
    json_body = {"Content-Type": "application/json"}
    created = json.loads(request(project.url("/workflows/"), token=token, data=body, headers=json_body)[2])
    status, _, answer = request(
        project.url(f"/workflow/{created['id']}/retry"), token=token, data=b"", headers=json_body
    )
    assert status == 409 and "start" in json.loads(answer)["available_transitions"]


# --- The admin and the browsable API, logged in ------------------------------------------------


@pytest.fixture(scope="module")
def browser(project):
    """A session of the superuser, logged in through the admin's login form."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(project.url("/admin/login/"), timeout=10).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
    form = urllib.parse.urlencode({"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": csrf})
    login = urllib.request.Request(
        project.url("/admin/login/?next=/admin/"), data=form.encode(), headers={"Referer": project.url("/admin/login/")}
    )
    assert opener.open(login, timeout=10).url == project.url("/admin/")
    return opener


def test_the_admin_shows_the_workflows_and_the_overview(project, browser):
    index = request(project.url("/admin/"), opener=browser, headers={"Accept": "text/html"})[2]
    overview = "/admin/workflow_orchestrator/workflow/dashboard/"
    assert dom.parse(index).one("a#overview-link")["href"] == overview
    status, _, page = request(project.url(overview), opener=browser, headers={"Accept": "text/html"})
    assert status == 200 and dom.parse(page).one("#dashboard")
    changelist = "/admin/workflow_orchestrator/workflow/?q=first-invoice"
    status, _, page = request(project.url(changelist), opener=browser, headers={"Accept": "text/html"})
    assert status == 200 and "first-invoice" in dom.parse(page).texts("#result_list tbody th.field-name")
    status, _, css = request(project.url("/static/workflow_orchestrator/admin.css"), headers={"Accept": "text/css"})
    assert status == 200 and css


def test_the_browsable_api_lists_the_workflows_for_the_logged_in_user(project, browser):
    status, headers, page = request(project.url("/workflows/"), opener=browser, headers={"Accept": "text/html"})
    assert status == 200 and headers.get_content_type() == "text/html"
    page = dom.parse(page)
    assert page.one("title").text.endswith("Workflow orchestrator API")
    assert "first-invoice" in page.one(".response-info").text
    status, _, body = request(project.url("/workflows/?search=first-invoice"), opener=browser)
    assert status == 200 and json.loads(body)["results"][0]["name"] == "first-invoice"


# --- django-q2's commands ---------------------------------------------------------------------


def test_qinfo_and_qmonitor_show_the_running_cluster(project):
    info = project.manage("qinfo")
    assert "Blessed is not installed" not in info and "Clusters" in info, info
    monitor = project.manage("qmonitor", "--run-once")
    assert "Blessed is not installed" not in monitor and "Host" in monitor, monitor
