"""The documentation cannot drift: the schema document is the one the models generate, every
name a diagram cites exists in the code, every Mermaid diagram renders with the pinned
renderer, every link between documents resolves, the README links to every document and
stays short, the configuration document lists every setting as the code declares it, and
the project layout matches the tree."""

import ast
import importlib
import io
import json
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
from workflow_orchestrator.conf import SETTINGS

DOCUMENTS = [ROOT / "README.md", ROOT / "QUICKSTART.md", *sorted((ROOT / "docs").glob("*.md"))]
MERMAID_JS = ROOT / "docs" / "mermaid" / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"
FENCE = re.compile(r"^```mermaid\n(.*?)^```", re.DOTALL | re.MULTILINE)
# A dotted name whose first part is a module of workflow_orchestrator/ or django_q: `services.task_record`,
# `api.views.WorkflowViewSet.create_and_start`, `services.transitions.fire`, `django_q.pusher.pusher`.
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
    modules = {path.stem for path in package.glob("*.py") if path.stem != "__init__"}
    return modules | {path.parent.name for path in package.glob("*/__init__.py")}


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
    cited = cited_names("W->>PG: services.task_claim: services.outcomes.task_claim")
    assert cited == ["services.task_claim", "services.outcomes.task_claim"]
    assert resolve("services.outcomes.task_claim") is resolve("services.task_claim")
    with pytest.raises(AttributeError):
        resolve("services.task_claim_renamed")
    with pytest.raises(AttributeError):
        resolve("statements.CLAIM")  # a statement is cited by its name in sql/*.sql, not as a constant
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

    from tests.conftest import CHROMIUM_ARGS

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


# --- the configuration document --------------------------------------------------------------

CONFIGURATION = ROOT / "docs" / "CONFIGURATION.md"
SETTING_ROW = re.compile(r"^\| `([A-Z_]+)` \| `([^`]*)` \| ([^|]+?) \|", re.MULTILINE)


def documented_settings() -> dict[str, tuple[str, str]]:
    """The rows of the document's table of the app's settings: name → (default, type)."""
    section = CONFIGURATION.read_text().split("\n## The app's settings\n")[1].split("\n## ")[0]
    return {name: (default, kind) for name, default, kind in SETTING_ROW.findall(section)}


def type_in_words(setting) -> str:
    if setting.kind is list:
        return "list of strings"
    if setting.kind is str:
        return "string"
    return f"{'whole number' if setting.kind is int else 'number'} ≥ {setting.minimum}"


def site_variables() -> set[str]:
    """The environment variables the example site reads."""
    source = (ROOT / "orchestrator_site" / "settings.py").read_text()
    return set(re.findall(r'\benv(?:_\w+|\.\w+)?\("([A-Z_]+)"', source))


def test_every_setting_of_the_app_is_documented_with_its_default_and_type():
    documented = documented_settings()
    assert sorted(set(SETTINGS) - set(documented)) == []
    for name, setting in SETTINGS.items():
        default, kind = documented[name]
        assert ast.literal_eval(default) == setting.default, name
        assert type(ast.literal_eval(default)) is type(setting.default), name
        assert kind == type_in_words(setting), name


def test_every_setting_the_configuration_document_names_exists():
    assert sorted(set(documented_settings()) - set(SETTINGS)) == []
    named = set(re.findall(r"\bORCH_[A-Z_]*[A-Z]\b", CONFIGURATION.read_text()))
    assert sorted(named - set(SETTINGS) - site_variables()) == []


def test_every_variable_of_the_example_site_is_documented():
    text = CONFIGURATION.read_text()
    assert sorted(name for name in site_variables() if f"`{name}`" not in text) == []
    assert site_variables() >= set(SETTINGS), "the site reads each of the app's settings from the environment"


def test_env_example_shows_the_default_of_each_setting_of_the_app():
    lines = set((ROOT / ".env.example").read_text().splitlines())
    for name, setting in SETTINGS.items():
        value = ",".join(setting.default) if setting.kind is list else setting.default
        assert f"# {name}={value}" in lines, name


# --- the README, the links between documents, the project layout ---------------------------

README = ROOT / "README.md"
README_MAX_LINES = 300  # read in five minutes; reference material lives in docs/
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)
ANY_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LAYOUT = re.compile(r"^## Project layout\n.*?^```\n(.*?)^```", re.DOTALL | re.MULTILINE)


def prose(path: Path) -> str:
    """The document without its fenced blocks: what a reader sees as text and links."""
    return ANY_FENCE.sub("", path.read_text())


def local_links(path: Path) -> list[str]:
    return [link for link in LINK.findall(prose(path)) if not re.match(r"[a-z]+:", link)]


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, numbered as GitHub numbers repeated ones (`-1`, `-2`, …)."""
    found, seen = set(), {}
    for heading in HEADING.findall(prose(path)):
        slug = anchor(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for link in local_links(path):
        target, _, fragment = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{link}: no such heading in {file.name}")
    return broken


def test_github_anchors_are_computed_as_github_does():
    assert anchor("PostgreSQL + Redis, worker clusters on several machines") == (
        "postgresql--redis-worker-clusters-on-several-machines"
    )
    assert anchor("The handler's `ctx`") == "the-handlers-ctx"
    assert anchor("The `workflow_transitioned` signal") == "the-workflow_transitioned-signal"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_of_the_documentation_resolves_to_a_file_and_heading(document):
    assert broken_links(document) == []


def test_a_link_to_a_missing_file_or_heading_is_reported(tmp_path):
    page = tmp_path / "PAGE.md"
    page.write_text("# Page\n\n## A section\n\n[ok](#a-section) [no](#nowhere) [gone](GONE.md)\n")
    assert broken_links(page) == ["#nowhere: no such heading in PAGE.md", "GONE.md: no such file"]


def test_the_readme_links_to_every_document_in_docs_and_the_quick_start():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in local_links(README)}
    documents = [ROOT / "QUICKSTART.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert [str(path.relative_to(ROOT)) for path in documents if path.resolve() not in linked] == []


def test_the_readme_is_short_and_its_contents_list_every_section_in_order():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    sections = re.findall(r"^## (.+)$", prose(README), re.MULTILINE)
    contents = re.findall(r"^- \[(.+?)\]\(#(.+?)\)$", text, re.MULTILINE)
    assert [title for title, _ in contents] == sections
    assert all(target == anchor(title) for title, target in contents)


def test_the_readme_s_task_type_and_definition_run_as_its_command_shows(engine):
    text = README.read_text()
    exec(re.search(r"```python\n(# myapp/workflow_tasks\.py\n.*?)```", text, re.DOTALL)[1], {})
    command = re.compile(r"`python manage\.py workflow start .*?--definition (\S+) --input '(.*?)'`")
    definition, given = command.search(text).groups()
    workflow = engine.start(definition=definition, input=json.loads(given), tasks=None)
    engine.drain()
    workflow.refresh_from_db()
    assert workflow.state == "COMPLETE", workflow.error
    assert workflow.results["EXECUTE"] == {"resize": {"width": 100, "urls": ["a.png"]}}
    assert workflow.results["VALIDATE"] == {"made": 1}


def layout_paths() -> list[str]:
    """The first word of each line of the layout in docs/ARCHITECTURE.md: one path per line."""
    layout = LAYOUT.search((ROOT / "docs" / "ARCHITECTURE.md").read_text())[1]
    return [line.split()[0] for line in layout.splitlines() if line.strip()]


def test_every_path_the_project_layout_lists_exists():
    paths = layout_paths()
    assert len(paths) > 30, paths
    assert [path for path in paths if not (ROOT / path).exists()] == []


def test_the_project_layout_lists_every_module_and_command_of_workflows():
    package = ROOT / "workflow_orchestrator"
    modules = [
        path
        for path in sorted(package.rglob("*.py"))
        if path.name != "__init__.py" and "migrations" not in path.relative_to(package).parts
    ]
    paths = layout_paths()
    assert [str(path.relative_to(ROOT)) for path in modules if str(path.relative_to(ROOT)) not in paths] == []
