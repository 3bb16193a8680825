"""Labels: a workflow's flat object of string keys and values, given at create (API body,
`--label k=v`, the admin's form, a definition's defaults), and the filter `?label=k:v`
(repeatable, every one must match) in the API, the admin and the CLI."""

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests import dom
from tests.test_api import client_for
from workflow_orchestrator import selectors, services, values
from workflow_orchestrator.models import Actor, Workflow
from workflow_orchestrator.registry import WorkflowDefinition, register_definition, unregister_definition

TASKS = [{"type": "noop"}]


def create(name: str, labels=None, **kwargs) -> Workflow:
    workflow, _ = services.workflow_create(name=name, tasks=TASKS, actor=Actor.SYSTEM, labels=labels, **kwargs)
    return workflow


@pytest.fixture
def labelled_definition():
    definition = register_definition(WorkflowDefinition("billing-run", labels={"team": "billing", "env": "prod"}))
    yield definition
    unregister_definition(definition.key, definition.version)


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", password="pw")


def names(workflows) -> set[str]:
    return {workflow.name for workflow in workflows}


def test_labels_are_stored_and_shown(db, owner):
    api = client_for(owner)
    response = api.post("/workflows/", {"name": "acme import", "labels": {"customer": "acme", "env": "prod"}}, "json")
    assert response.status_code == 201, response.json()
    assert response.json()["labels"] == {"customer": "acme", "env": "prod"}
    assert Workflow.objects.get(pk=response.json()["id"]).labels == {"customer": "acme", "env": "prod"}
    assert api.get("/workflows/").json()["results"][0]["labels"] == {"customer": "acme", "env": "prod"}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["customer", "acme"], "labels must be an object of string keys and values"),
        ({"customer": 7}, "labels customer must be a string"),
        ({"customer": {"name": "acme"}}, "labels customer must be a string"),
        ({"": "x"}, "labels key '' must be a non-empty string"),
        ({"a b": "x"}, "labels key 'a b' may hold only letters, digits and _ . - /"),
        ({"k:v": "x"}, "labels key 'k:v' may hold only letters, digits and _ . - /"),
        ({"k": "x" * 201}, "labels k is longer than 200 characters"),
        ({"k": "nul\x00"}, "labels k contains a NUL character"),
        ({f"k{i}": "v" for i in range(21)}, "labels may hold at most 20 labels, not 21"),
    ],
)
def test_bad_labels_get_400_naming_the_field(db, owner, labels, message):
    response = client_for(owner).post("/workflows/", {"name": "x", "labels": labels}, "json")
    assert response.status_code == 400
    assert message in str(response.json()["labels"])
    assert not Workflow.objects.exists()


def test_a_definition_s_labels_are_defaults_under_the_request_s(db, labelled_definition):
    assert create("a", definition="billing-run").labels == {"team": "billing", "env": "prod"}
    assert create("b", {"env": "staging", "customer": "acme"}, definition="billing-run").labels == {
        "team": "billing",
        "env": "staging",
        "customer": "acme",
    }


def test_too_many_labels_with_the_definition_s_are_refused(db, labelled_definition):
    with pytest.raises(ValidationError, match="with the definition's may hold at most 20 labels, not 21"):
        create("a", {f"k{i}": "v" for i in range(19)}, definition="billing-run")


def test_a_definition_with_bad_labels_is_refused_at_registration():
    with pytest.raises(ValueError, match="its labels key 'a b' may hold only"):
        register_definition(WorkflowDefinition("bad-labels", labels={"a b": "x"}))


def test_labels_take_part_in_the_idempotency_fingerprint(db):
    first, created = services.workflow_create(
        name="a", tasks=TASKS, actor=Actor.SYSTEM, idempotency_key="k1", labels={"env": "prod"}
    )
    again, created_again = services.workflow_create(
        name="a", tasks=TASKS, actor=Actor.SYSTEM, idempotency_key="k1", labels={"env": "prod"}
    )
    assert created and not created_again and again.pk == first.pk
    with pytest.raises(services.IdempotencyConflict):
        services.workflow_create(name="a", tasks=TASKS, actor=Actor.SYSTEM, idempotency_key="k1", labels={"env": "x"})


def test_a_started_workflow_keeps_its_labels(engine):
    workflow, _ = engine.call(services.workflow_create, name="a", tasks=TASKS, actor=Actor.SYSTEM, start=True,
                              labels={"customer": "acme"})  # fmt: skip
    engine.drain()
    workflow.refresh_from_db()
    assert (workflow.state, workflow.labels) == ("COMPLETE", {"customer": "acme"})


def test_labels_change_with_an_update_before_start(db, owner):
    api = client_for(owner)
    workflow = api.post("/workflows/", {"name": "a", "labels": {"env": "prod"}}, "json").json()
    response = api.patch(f"/workflows/{workflow['id']}", {"labels": {"env": "staging"}}, "json")
    assert response.status_code == 200, response.json()
    assert response.json()["labels"] == {"env": "staging"}
    response = api.patch(f"/workflows/{workflow['id']}", {"labels": {"env": 1}}, "json")
    assert response.status_code == 400 and "labels env must be a string" in str(response.json()["labels"])


def test_with_labels_matches_every_label_given(db):
    create("acme prod", {"customer": "acme", "env": "prod"})
    create("acme staging", {"customer": "acme", "env": "staging"})
    create("globex prod", {"customer": "globex", "env": "prod"})
    create("no labels")
    create("odd key", {"a__b": "1", "x.y/z": "2"})
    workflows = Workflow.objects.all()
    assert names(selectors.with_labels(workflows, {"customer": "acme"})) == {"acme prod", "acme staging"}
    assert names(selectors.with_labels(workflows, {"customer": "acme", "env": "prod"})) == {"acme prod"}
    assert names(selectors.with_labels(workflows, {"env": "prod"})) == {"acme prod", "globex prod"}
    assert names(selectors.with_labels(workflows, {"customer": "initech"})) == set()
    assert names(selectors.with_labels(workflows, {"a__b": "1", "x.y/z": "2"})) == {"odd key"}
    assert names(selectors.with_labels(workflows, {})) == names(workflows)


def test_the_api_filters_on_repeated_labels(db, owner):
    for name, labels in [("acme prod", {"customer": "acme", "env": "prod"}), ("acme dev", {"customer": "acme"})]:
        services.workflow_create(name=name, tasks=TASKS, actor=Actor.api(owner), labels=labels)
    api = client_for(owner)
    found = api.get("/workflows/", {"label": ["customer:acme", "env:prod"]}).json()["results"]
    assert [workflow["name"] for workflow in found] == ["acme prod"]
    found = api.get("/workflows/?label=customer:acme").json()["results"]
    assert {workflow["name"] for workflow in found} == {"acme prod", "acme dev"}
    assert api.get("/workflows/?label=url:https://x.example/a").json()["count"] == 0  # the value may hold ":"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("label=customer", "'customer' is not key:value"),
        ("label=customer:", "'customer:': the label has no value"),
        ("label=a%20b:c", "'a b:c': the key may hold only letters, digits and _ . - /"),
        ("label=env:prod&label=env:dev", "env is given twice, as 'prod' and 'dev'"),
    ],
)
def test_a_bad_label_filter_is_a_400_naming_it(db, owner, query, message):
    response = client_for(owner).get(f"/workflows/?{query}")
    assert response.status_code == 400
    assert message in str(response.json()["label"])


def test_the_label_filter_uses_the_gin_index_on_postgresql(db):
    if connection.vendor != "postgresql":
        pytest.skip("the GIN index is PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'workflow_labels'")
        assert "gin (labels jsonb_path_ops)" in cursor.fetchone()[0]
        cursor.execute("SET enable_seqscan = off")  # a tiny table: make the planner show it can use the index
        query = selectors.with_labels(Workflow.objects.all(), {"customer": "acme"}).values("pk").query
        sql, params = query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = " ".join(row[0] for row in cursor.fetchall())
        cursor.execute("SET enable_seqscan = on")
    assert "workflow_labels" in plan, plan


def test_a_label_filter_is_one_query_whatever_the_labels(db, owner):
    create("acme", {"customer": "acme", "env": "prod", "team": "a"})
    with CaptureQueriesContext(connection) as one:
        assert len(selectors.with_labels(Workflow.objects.all(), {"customer": "acme"})) == 1
    with CaptureQueriesContext(connection) as three:
        assert len(selectors.with_labels(Workflow.objects.all(), {"customer": "acme", "env": "prod", "team": "a"})) == 1
    assert len(one) == len(three) == 1


def test_parse_label_reads_both_separators():
    assert values.parse_label("env=prod", "=") == ("env", "prod")
    assert values.parse_label("url:https://x", ":") == ("url", "https://x")
    with pytest.raises(ValueError, match="is not key=value"):
        values.parse_label("env", "=")


def test_the_cli_starts_with_labels_and_lists_by_them(db, capsys):
    call_command("workflow", "start", "--name", "acme nightly", "--label", "customer=acme", "--label", "env=prod")
    call_command("workflow", "start", "--name", "globex nightly", "--label", "customer=globex")
    assert Workflow.objects.get(name="acme nightly").labels == {"customer": "acme", "env": "prod"}
    capsys.readouterr()
    call_command("workflow", "list", "--label", "customer=acme")
    listed = capsys.readouterr().out
    assert "acme nightly" in listed and "globex" not in listed


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--label", "customer"], "'customer' is not key=value"),
        (["--label", "a b=c"], "the key may hold only letters, digits and _ . - /"),
        (["--label", "env=prod", "--label", "env=dev"], "--label env is given twice, as 'prod' and 'dev'"),
    ],
)
def test_the_cli_refuses_a_bad_label(db, arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("workflow", "start", "--name", "x", *arguments)
    assert not Workflow.objects.exists()


# --- The admin ---------------------------------------------------------------------------------

CHANGELIST = "/admin/workflow_orchestrator/workflow/"


def test_the_admin_adds_a_workflow_with_labels(admin_client):
    response = admin_client.post(
        f"{CHANGELIST}add/",
        {"name": "acme import", "definition": "default", "mode": "auto", "input": "{}", "tasks": "",
         "labels": "customer=acme\n\nenv=prod\n"},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Workflow.objects.get().labels == {"customer": "acme", "env": "prod"}


@pytest.mark.parametrize(
    ("text", "message"),
    [("customer", "&#x27;customer&#x27; is not key=value"), ("a=1\na=2", "a is given twice, as &#x27;1&#x27; and")],
)
def test_the_admin_s_add_form_refuses_bad_labels(admin_client, text, message):
    response = admin_client.post(
        f"{CHANGELIST}add/", {"name": "x", "definition": "default", "mode": "auto", "input": "{}", "labels": text}
    )
    assert response.status_code == 200 and message in response.content.decode()
    assert not Workflow.objects.exists()


def test_the_admin_list_filters_by_labels_and_the_page_links_to_them(admin_client):
    acme = create("acme prod", {"customer": "acme", "env": "prod"})
    create("acme staging", {"customer": "acme", "env": "staging"})
    create("globex prod", {"customer": "globex", "env": "prod"})
    page = dom.parse(admin_client.get(f"{CHANGELIST}?label=customer:acme&label=env:prod"))
    assert [a.text for a in page.select("#result_list tbody th a")] == ["acme prod"]
    assert "customer = acme" in page.one("#changelist-filter").text
    page = dom.parse(admin_client.get(f"{CHANGELIST}?label=customer:acme"))
    assert sorted(a.text for a in page.select("#result_list tbody th a")) == ["acme prod", "acme staging"]

    page = dom.parse(admin_client.get(f"{CHANGELIST}{acme.pk}/change/"))
    chips = page.select(".field-label_links a.label-chip")
    assert [chip.text for chip in chips] == ["customer = acme", "env = prod"]
    found = dom.parse(admin_client.get(chips[1]["href"]))
    assert sorted(a.text for a in found.select("#result_list tbody th a")) == ["acme prod", "globex prod"]


@pytest.mark.parametrize("query", ["label=customer", "label=a%20b:c", "label=env:prod&label=env:dev"])
def test_a_bad_label_in_the_admin_list_is_a_400(admin_client, query):
    assert admin_client.get(f"{CHANGELIST}?{query}").status_code == 400
