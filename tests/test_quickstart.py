"""QUICKSTART.md, followed to the letter on a fresh copy of the repository: every `sh` block
runs in order in bash (variables carry over from one block to the next, as in a reader's
shell), `make run` runs in the background as the reader's first shell (started again
where the guide starts it again), each `text` block that follows a command lists lines its
output must contain, the admin step is done in a real browser with the values the guide
gives, and its password reset is typed at its prompts. The only change: the server listens
on a free port instead of 8000."""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

GUIDE = ROOT / "QUICKSTART.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
# What a fresh shell would not have: the settings come from the defaults and `.env`.
NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "HOST", "PORT", "WEB_CONCURRENCY", "CONN_MAX_AGE", "DJANGO_")


@dataclass
class Step:
    commands: str
    expected: list[str] = field(default_factory=list)

    @property
    def starts_the_server(self) -> bool:
        return self.commands.strip() == "make run"


def guide_steps(text: str) -> list[Step]:
    steps = []
    for language, body in FENCE.findall(text):
        if language == "sh":
            steps.append(Step(body))
        elif language == "text" and steps and not steps[-1].expected:
            steps[-1].expected = [line.strip() for line in body.splitlines() if line.strip()]
    return steps


def admin_values(text: str) -> dict[str, str]:
    """The values the guide tells the reader to type into the admin's add form."""
    return dict(re.findall(r"^- \*\*(\w+)\*\*: `(.+)`$", text, re.MULTILINE))


def fresh_copy(target: Path) -> Path:
    """The repository's files as a clone has them (tracked and new, nothing ignored), with
    the installed virtualenv linked in so that `make run` finds it ready."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)  # mtimes kept: make sees the install is current
    (target / ".venv").symlink_to((ROOT / ".venv").resolve())
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`make run` in its own shell (process group), its output collected."""

    def __init__(self, commands: str, cwd: Path, env: dict):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            ["bash", "-c", commands], cwd=cwd, env=env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_until_ready(self, expected: list[str], port: int) -> None:
        """Until it printed the `expected` lines and its web server answers on `port`."""
        wait_for(lambda: all(line in self.output() for line in expected), 120, "make run to print what the guide shows")
        wait_for(lambda: self.process.poll() is None and _answers(port), 30, "the web server to answer")

    def stop(self) -> None:
        """Ctrl-C, as the reader stops it: SIGINT to the shell's whole process group."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def run_block(step: Step, cwd: Path, env: dict, state: Path) -> str:
    """Run a block as the reader's second shell: variables set by earlier blocks are still
    there (kept in `state` between blocks)."""
    script = f"set -a\n[ -f {state} ] && . {state}\n{step.commands}\nexport -p > {state}\n"
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, f"{step.commands}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    return result.stdout


def sign_in_and_add_a_workflow(base_url: str, password: str, values: dict[str, str]) -> str:
    """The guide's admin step in Debian's chromium; returns the workflow page's text once
    the workflow is COMPLETE."""
    from playwright.sync_api import sync_playwright

    from tests.conftest import CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(base_url=base_url)
        page.set_default_timeout(20_000)
        page.goto("/admin/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.get_by_role("row", name=re.compile(r"^Workflows\b")).get_by_role("link", name="Workflows").click()
        page.get_by_role("link", name="Add workflow").click()
        page.fill("#id_name", values["Name"])
        page.fill("#id_tasks", values["Tasks"])
        assert page.is_checked("#id_start_now")
        page.click("input[name=_save]")
        # The guide says the page updates itself: no reload.
        deadline = time.monotonic() + 60
        while "COMPLETE" not in (text := page.inner_text("#content")) and time.monotonic() < deadline:
            time.sleep(0.5)
        browser.close()
    return text


def reset_the_admin_password_as_the_guide_says(guide: str, cwd: Path, env: dict) -> None:
    """The guide's password reset, typed at its two prompts; then the new password signs in.
    Without a terminal (a session of its own), the prompts read standard input."""
    command = re.search(r"`(\.venv/bin/python manage\.py changepassword admin)`", guide)[1]
    password = "a-new-password-for-the-quick-start"
    result = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, input=f"{password}\n{password}\n",
        capture_output=True, text=True, timeout=60, start_new_session=True,
    )  # fmt: skip
    assert result.returncode == 0 and "Password changed successfully" in result.stdout, result.stdout + result.stderr
    signs_in = (
        "from django.contrib.auth import authenticate; "
        f"print(authenticate(username='admin', password='{password}') is not None)"
    )
    check = [".venv/bin/python", "manage.py", "shell", "--no-imports", "-c", signs_in]
    assert subprocess.run(check, cwd=cwd, env=env, capture_output=True, text=True, timeout=60).stdout.strip() == "True"


def test_the_quick_start_works_as_written_on_a_fresh_copy(tmp_path):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("the admin step needs Debian's chromium at /usr/bin/chromium")
    guide = GUIDE.read_text()
    steps = guide_steps(guide)
    values = admin_values(guide)
    assert [step.starts_the_server for step in steps] == [True, False, False, True, False]
    assert set(values) == {"Name", "Tasks"}

    port = free_port()
    here = f"127.0.0.1:{port}"
    repo = fresh_copy(tmp_path / "orchestrator")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ORCH_", *NOT_INHERITED))}
    env.update(PORT=str(port), PYTHONUNBUFFERED="1")
    state = tmp_path / "shell-state"
    server = None
    try:
        for number, step in enumerate(steps, 1):
            commands = step.commands.replace("127.0.0.1:8000", here)
            expected = [line.replace("127.0.0.1:8000", here) for line in step.expected]
            if step.starts_the_server:
                if server is not None:
                    server.stop()
                server = Server(commands, repo, env)
                server.wait_until_ready(expected, port)
                if number == 1:
                    password = re.search(r"with password: (\S+)", server.output())[1]
                    page = sign_in_and_add_a_workflow(f"http://{here}", password, values)
                    assert "COMPLETE" in page and "echo-1" in page, page
                continue
            output = run_block(Step(commands), repo, env, state)
            missing = [line for line in expected if line not in output]
            assert not missing, f"step {number}: {missing} not in\n{output}"
        reset_the_admin_password_as_the_guide_says(guide, repo, env)
    except BaseException:
        if server is not None:
            print(server.output()[-5000:])  # shown by pytest with the failure
        raise
    finally:
        if server is not None:
            server.stop()


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
