"""The documentation cannot drift: the schema document is the one the models generate, every
name a diagram cites exists in the code, every Mermaid diagram renders with the pinned
renderer, and the README's links and project layout match the tree."""

import importlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command

from orchestrator_dev.management.commands.docs_schema import render
from tests.conftest import ROOT

DOCUMENTS = [ROOT / "README.md", ROOT / "QUICKSTART.md", *sorted((ROOT / "docs").glob("*.md"))]
MERMAID_JS = ROOT / "docs" / "mermaid" / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"
FENCE = re.compile(r"^```mermaid\n(.*?)^```", re.DOTALL | re.MULTILINE)
# A dotted name whose first part is a module of workflow_orchestrator/ or django_q: `services.task_record`,
# `api.views.WorkflowViewSet.create_and_start`, `statements.CLAIM`, `django_q.pusher.pusher`.
CODE_NAME = re.compile(r"(?<![\w.])((?:django_q|[a-z_]+)(?:\.[A-Za-z_]\w*)+)")
ARROW = re.compile(r"^\s*\w+\s*(-|--)(>>|x|\))\+?-?\s*\w+\s*:(.*)$")


def mermaid_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


def all_blocks() -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)} #{number}", block)
        for path in DOCUMENTS
        for number, block in enumerate(mermaid_blocks(path), 1)
    ]


def workflow_modules() -> set[str]:
    package = ROOT / "workflow_orchestrator"
    return {path.stem for path in package.glob("*.py") if path.stem != "__init__"} | {"api", "management"}


def resolve(name: str):
    """The object `name` names: `workflows.<module>.<attr>…` or `django_q.<module>.<attr>…`;
    a file name such as `services.py` names the module's file."""
    if name.endswith(".py"):
        if not (ROOT / "workflow_orchestrator" / name).exists():
            raise ImportError(name)
        return name
    parts = name.split(".")
    root = "django_q" if parts[0] == "django_q" else "workflow_orchestrator"
    parts = parts[1:] if root == "django_q" else parts
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join([root, *parts[:split]]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def cited_names(block: str) -> list[str]:
    known = workflow_modules() | {"django_q"}
    return [name for name in CODE_NAME.findall(block) if name.split(".")[0] in known]


# --- the schema document -------------------------------------------------------------------


def test_the_committed_schema_document_is_the_one_the_models_generate():
    errors = io.StringIO()
    try:
        call_command("docs_schema", "--check", stdout=io.StringIO(), stderr=errors)
    except CommandError as stale:
        pytest.fail(f"{stale}\n{errors.getvalue()}")


def test_a_stale_schema_document_fails_the_check_with_exit_1_and_a_diff(tmp_path):
    stale = tmp_path / "SCHEMA.md"
    stale.write_text(render().replace("Results by phase.", "Results, by phase."))
    result = subprocess.run(
        [sys.executable, "manage.py", "docs_schema", "--check", "--output", str(stale)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "-| `results` | `jsonb` | no | `{}` | Results, by phase. |" in result.stderr
    assert "+| `results` | `jsonb` | no | `{}` | Results by phase. |" in result.stderr
    assert "is stale: run `python manage.py docs_schema`" in result.stderr


def test_the_generator_writes_the_document_the_check_accepts(tmp_path):
    target = tmp_path / "SCHEMA.md"
    call_command("docs_schema", "--output", str(target), stdout=io.StringIO())
    call_command("docs_schema", "--check", "--output", str(target), stdout=io.StringIO())
    assert target.read_text() == render()


def test_the_schema_document_has_every_table_column_constraint_and_index_of_the_app():
    text = render()
    for model in apps.get_app_config("workflow_orchestrator").get_models():
        meta = model._meta
        assert f"## `{meta.db_table}`" in text
        assert f"    {meta.db_table} {{" in text  # an entity of the ER diagram
        section = text.split(f"## `{meta.db_table}`")[1].split("\n## ")[0]
        for field in meta.local_fields:
            assert f"| `{field.column}` | `" in section, (meta.db_table, field.column)
            if field.help_text:
                assert " ".join(str(field.help_text).split()) in section
        for item in [*meta.constraints, *meta.indexes]:
            assert f'"{item.name}"' in section, (meta.db_table, item.name)


def test_the_schema_document_uses_postgresql_types_on_any_database():
    text = render()
    assert "`jsonb`" in text and "`timestamp with time zone`" in text and "`uuid`" in text
    assert "GENERATED BY DEFAULT AS IDENTITY" in text


@pytest.fixture
def unusual_models():
    """Tables of kinds the app may grow: a many-to-many field, a one-to-one field, a
    database default, an integer choice as default."""
    from django.db import models
    from django.db.models.functions import Now
    from django.test.utils import isolate_apps

    with isolate_apps("workflow_orchestrator"):

        class Priority(models.IntegerChoices):
            LOW = 1
            HIGH = 2

        class Label(models.Model):  # noqa: DJ008  (never shown)
            """A label for workflows."""

            name = models.CharField(max_length=50, unique=True)
            priority = models.IntegerField(choices=Priority.choices, default=Priority.HIGH)
            created_at = models.DateTimeField(db_default=Now())

            class Meta:
                app_label = "workflow_orchestrator"

        class Board(models.Model):  # noqa: DJ008  (never shown)
            label = models.OneToOneField(Label, on_delete=models.CASCADE)
            members = models.ManyToManyField(Label, related_name="boards")

            class Meta:
                app_label = "workflow_orchestrator"

        yield [Label, Board, Board._meta.get_field("members").remote_field.through]


def test_the_schema_document_covers_many_to_many_one_to_one_and_database_defaults(unusual_models):
    text = render(unusual_models)
    assert "| `priority` | `integer` | no | `2` | One of `1`, `2`. |" in text
    assert "| `created_at` | `timestamp with time zone` | no | `Now()` (in the database) |" in text
    assert '"created_at" timestamp with time zone DEFAULT (STATEMENT_TIMESTAMP()) NOT NULL' in text
    assert 'workflow_orchestrator_label ||--o| workflow_orchestrator_board : "label_id"' in text
    assert "## `workflow_orchestrator_board_members`" in text
    assert "The table of the many-to-many field `Board.members`." in text
    assert 'workflow_orchestrator_label ||--o{ workflow_orchestrator_board_members : "label_id"' in text


# --- diagrams ------------------------------------------------------------------------------


def test_every_name_a_diagram_cites_exists_in_the_code():
    blocks = all_blocks()
    cited = {name for _, block in blocks for name in cited_names(block)}
    assert len(cited) > 40, sorted(cited)  # the architecture's diagrams cite the code throughout
    missing = []
    for name in sorted(cited):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"diagrams cite names the code does not have: {missing}"


def test_every_call_in_a_sequence_diagram_names_the_code_that_makes_it():
    sequences = [(where, block) for where, block in all_blocks() if block.lstrip().startswith("sequenceDiagram")]
    assert len(sequences) >= 2
    for where, block in sequences:
        for line in block.splitlines():
            arrow = ARROW.match(line)
            if arrow and arrow[1] == "-":  # a solid arrow: a call or a statement
                assert cited_names(arrow[3]), f"{where}: this arrow names no function or statement: {line.strip()}"


def test_a_renamed_function_would_fail_the_check():
    assert cited_names("W->>PG: services.task_claim: statements.CLAIM") == ["services.task_claim", "statements.CLAIM"]
    with pytest.raises(AttributeError):
        resolve("services.task_claim_renamed")
    assert resolve("api.views.WorkflowViewSet.create_and_start")
    assert resolve("django_q.pusher.pusher")


@pytest.fixture(scope="module")
def mermaid_page():
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    if not MERMAID_JS.exists():
        if not shutil.which("npm"):
            pytest.skip("needs npm, to install the pinned Mermaid renderer")
        pytest.fail("the pinned Mermaid renderer is not installed: run `npm ci --prefix docs/mermaid` (make test does)")
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_content("<!doctype html><html><body></body></html>")
        page.add_script_tag(path=str(MERMAID_JS))
        page.evaluate("mermaid.initialize({startOnLoad: false, securityLevel: 'strict'})")
        yield page
        browser.close()


RENDER = """async ([id, text]) => {
    try {
        const {svg} = await mermaid.render(id, text);
        return svg.includes('<svg') && !svg.includes('Syntax error') ? '' : 'no diagram drawn';
    } catch (error) {
        return String(error && error.message || error);
    }
}"""


def test_every_mermaid_diagram_of_the_documentation_renders(mermaid_page):
    blocks = all_blocks()
    assert len(blocks) >= 6, [where for where, _ in blocks]
    failures = {}
    for number, (where, block) in enumerate(blocks):
        error = mermaid_page.evaluate(RENDER, [f"diagram{number}", block])
        if error:
            failures[where] = error
    assert not failures, failures


def test_the_entity_relationship_diagram_of_unusual_tables_renders(mermaid_page, unusual_models):
    diagram = FENCE.findall(render(unusual_models))[0]
    assert mermaid_page.evaluate(RENDER, ["unusual", diagram]) == ""


def test_the_renderer_reports_a_broken_diagram(mermaid_page):
    assert mermaid_page.evaluate(RENDER, ["broken", "sequenceDiagram\n    A->>: nobody"])


# --- the README ----------------------------------------------------------------------------

LAYOUT = re.compile(r"^## Project layout\n.*?^```\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_layout() -> str:
    return LAYOUT.search((ROOT / "README.md").read_text())[1]


def test_the_readme_links_to_the_architecture_schema_quick_start_and_reliability_documents():
    readme = (ROOT / "README.md").read_text()
    for target in ["docs/ARCHITECTURE.md", "docs/SCHEMA.md", "QUICKSTART.md", "docs/RELIABILITY.md"]:
        assert f"]({target})" in readme, target
    for link in re.findall(r"\]\(((?!https?:|#)[^)\s#]+)", readme):
        assert (ROOT / link).exists(), link


def layout_paths() -> list[str]:
    """The first word of each line of the layout: one path per line."""
    return [line.split()[0] for line in readme_layout().splitlines() if line.strip()]


def test_every_path_the_project_layout_lists_exists():
    paths = layout_paths()
    assert len(paths) > 30, paths
    assert [path for path in paths if not (ROOT / path).exists()] == []


def test_the_project_layout_lists_every_module_and_command_of_workflows():
    tree = [
        ROOT / "workflow_orchestrator",
        ROOT / "workflow_orchestrator" / "api",
        ROOT / "workflow_orchestrator" / "management" / "commands",
    ]
    modules = [path for folder in tree for path in sorted(folder.glob("*.py")) if path.name != "__init__.py"]
    paths = layout_paths()
    assert [str(path.relative_to(ROOT)) for path in modules if str(path.relative_to(ROOT)) not in paths] == []
