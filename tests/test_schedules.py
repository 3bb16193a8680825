"""Cron schedules: when runs fall due (time zones, the changes of the clocks), each due run
starting exactly one workflow, the refusal of bad expressions and time zones, the CLI and
the admin. Time is passed to `tick` and `schedule_fire` (`now=`), so a schedule every minute
is followed for three minutes without waiting for one; a real cluster is used only where
clusters matter: two of them firing one run, due four seconds ahead."""

import json
import pydoc
from datetime import UTC, datetime, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule

from tests import dom
from tests.conftest import reload, wait_for
from workflow_orchestrator import cron, queue, schedules
from workflow_orchestrator.api.serializers import WorkflowDetailSerializer
from workflow_orchestrator.models import Actor, State, Workflow, WorkflowSchedule

PARIS = "Europe/Paris"
CHANGELIST = reverse("admin:workflow_orchestrator_workflowschedule_changelist")
ADD = reverse("admin:workflow_orchestrator_workflowschedule_add")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def runs(expression: str, zone: str, after: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        after = cron.next_run(expression, zone, after)
        found.append(after)
    return found


def add(name="nightly", expression="0 3 * * *", zone="UTC", **fields) -> WorkflowSchedule:
    return schedules.schedule_save(WorkflowSchedule(name=name, cron=expression, time_zone=zone, **fields))


def due_now(schedule: WorkflowSchedule, when: datetime) -> WorkflowSchedule:
    """Make the schedule's next run fall due at `when` (as if `when` had come)."""
    WorkflowSchedule.objects.filter(pk=schedule.pk).update(next_run_at=when)
    return reload_schedule(schedule)


def reload_schedule(schedule: WorkflowSchedule) -> WorkflowSchedule:
    return WorkflowSchedule.objects.get(pk=schedule.pk)


# --- When runs fall due ------------------------------------------------------------------


def test_a_paris_schedule_runs_at_paris_time_in_winter_and_in_summer():
    # The clocks go forward on 29 March 2026: 09:00 in Paris is 08:00 UTC before, 07:00 after.
    assert runs("0 9 * * *", PARIS, utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 8),
        utc(2026, 3, 29, 7),
        utc(2026, 3, 30, 7),
    ]
    # And back on 25 October.
    assert runs("0 9 * * *", PARIS, utc(2026, 10, 24, 12), 2) == [utc(2026, 10, 25, 8), utc(2026, 10, 26, 8)]


def test_a_time_the_spring_change_skips_runs_right_after_the_gap():
    # 02:30 does not exist in Paris on 29 March 2026: that day's run is at 03:00 (01:00 UTC).
    assert runs("30 2 * * *", PARIS, utc(2026, 3, 28, 12), 2) == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]


def test_a_time_the_autumn_change_repeats_runs_once():
    # 02:30 happens twice in Paris on 25 October 2026 (00:30 and 01:30 UTC): one run.
    assert runs("30 2 * * *", PARIS, utc(2026, 10, 24, 12), 2) == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_an_hourly_schedule_follows_the_real_hours_through_the_autumn_change():
    assert runs("0 * * * *", PARIS, utc(2026, 10, 24, 23, 30), 4) == [
        utc(2026, 10, 25, 0),  # 02:00 summer time
        utc(2026, 10, 25, 1),  # 02:00 winter time: another real hour
        utc(2026, 10, 25, 2),
        utc(2026, 10, 25, 3),
    ]


def test_the_latest_run_counts_a_run_due_at_that_very_moment():
    assert cron.latest_run("*/5 * * * *", "UTC", utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 10, 5)
    assert cron.latest_run("*/5 * * * *", "UTC", utc(2026, 1, 1, 10, 9, 59)) == utc(2026, 1, 1, 10, 5)
    assert cron.latest_run("0 0 1 1 *", "UTC", utc(2026, 11, 26, 17)) == utc(2026, 1, 1)


def test_the_latest_run_skips_the_repeat_of_a_time_the_autumn_change_repeats():
    # At 02:00 UTC (03:00 in Paris) the latest 02:30 was the first one, at 00:30 UTC.
    assert cron.latest_run("30 2 * * *", PARIS, utc(2026, 10, 25, 2)) == utc(2026, 10, 25, 0, 30)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("61 * * * *", "not a valid cron expression"),
        ("* * * *", "has 4 fields"),
        ("0 0 * * * *", "has 6 fields"),  # croniter's seconds field: a schedule runs at most once a minute
        ("@fortnightly", "is not one of @yearly"),
        ("every day", "has 2 fields"),
        ("", "cannot be blank"),
    ],
)
def test_a_bad_cron_expression_is_refused_with_the_reason(db, expression, says):
    with pytest.raises(ValidationError) as refused:
        add(expression=expression)
    assert says in " ".join(refused.value.message_dict["cron"])
    assert not WorkflowSchedule.objects.exists()


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "paris"])
def test_an_unknown_time_zone_is_refused(db, zone):
    with pytest.raises(ValidationError) as refused:
        add(zone=zone)
    assert "is not a known time zone" in refused.value.message_dict["time_zone"][0]


def test_what_the_engine_would_refuse_at_run_time_is_refused_when_saved(db):
    with pytest.raises(ValidationError) as refused:
        add(definition="nope", tasks=[{"type": "no-such-type"}], input=[])
    assert set(refused.value.message_dict) == {"definition", "tasks", "input"}


# --- The expression in words --------------------------------------------------------------

CRON_WORDS = [
    ("30 2 * * *", "At 02:30 every day"),
    ("*/15 * * * *", "Every 15 minutes"),
    ("0 9 * * 1-5", "At 09:00 on Monday to Friday"),
    ("0 9 * * MON-FRI", "At 09:00 on Monday to Friday"),
    ("* * * * *", "Every minute"),
    ("0 * * * *", "At minute 0 past every hour"),
    ("5 */6 * * *", "At minute 5 past every 6th hour"),
    ("0 9-17 * * *", "At minute 0 past every hour from 9 to 17"),
    ("*/10 9-17 * * 1-5", "Every 10 minutes from 09:00 to 17:59 on Monday to Friday"),
    ("*/5 9,12 * * *", "Every 5 minutes during hours 9 and 12"),
    ("0,30 * * * *", "At minutes 0 and 30 past every hour"),
    ("0-10/2 * * * *", "At every 2nd minute from 0 to 10 past every hour"),
    ("0 1,13 * * *", "At 01:00 and 13:00 every day"),
    ("0 0 1 * *", "At 00:00 on day 1 of the month"),
    ("0 0 1,15 * *", "At 00:00 on days 1 and 15 of the month"),
    ("0 0 L * *", "At 00:00 on the last day of the month"),
    ("15 14 */2 * *", "At 14:15 on every 2nd day of the month"),
    ("30 8 1 * 1", "At 08:30 on day 1 of the month or on Monday"),  # cron runs on either
    ("0 12 * 1-3 *", "At 12:00 every day in January to March"),
    ("0 9 * jan,jul *", "At 09:00 every day in January and July"),
    ("0 8 * * 0,6", "At 08:00 on Sunday and Saturday"),
    ("0 8 * * 7", "At 08:00 on Sunday"),
    ("0 9 * * */2", "At 09:00 on every 2nd day of the week"),
    ("@daily", "At 00:00 every day"),
    ("@weekly", "At 00:00 on Sunday"),
    ("@hourly", "At minute 0 past every hour"),
    ("0 0 * * 1#2", "cron 0 0 * * 1#2"),  # the second Monday: given back as it is
]


@pytest.mark.parametrize(("expression", "words"), CRON_WORDS)
def test_a_cron_expression_is_read_out_in_words(expression, words):
    assert cron.cron_problem(expression) is None
    assert cron.cron_in_words(expression) == words


# --- Runs ----------------------------------------------------------------------------------


def test_saving_a_schedule_sets_its_next_run_in_its_time_zone(db):
    schedule = schedules.schedule_save(
        WorkflowSchedule(name="paris", cron="0 9 * * *", time_zone=PARIS), now=utc(2026, 7, 1, 12)
    )
    assert schedule.next_run_at == utc(2026, 7, 2, 7)


def test_a_due_run_starts_one_workflow_keyed_by_its_due_time(engine):
    schedule = add(expression="*/5 * * * *", input={"n": 1}, tasks=[{"type": "echo"}])
    due = utc(2026, 1, 1, 10, 5)
    due_now(schedule, due)
    workflow = engine.call(schedules.schedule_fire, schedule.pk, now=due + timedelta(seconds=1))
    assert workflow.idempotency_key == f"schedule:{schedule.pk}:2026-01-01T10:05:00+00:00"
    assert workflow.schedule == schedule and workflow.name == "nightly" and workflow.input == {"n": 1}
    assert workflow.transitions.get().actor_label == "system"
    assert WorkflowDetailSerializer(workflow).data["schedule"] == schedule.pk  # as the API shows it
    schedule = reload_schedule(schedule)
    assert (schedule.last_run_at, schedule.next_run_at) == (due, utc(2026, 1, 1, 10, 10))
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_a_run_fired_twice_starts_one_workflow(engine):
    schedule = add(expression="*/5 * * * *")
    due = utc(2026, 1, 1, 10, 5)
    due_now(schedule, due)
    first = engine.call(schedules.schedule_fire, schedule.pk, now=due)
    # A duplicate job (two clusters, a re-delivery) finds the run started.
    assert engine.call(schedules.schedule_fire, schedule.pk, now=due + timedelta(seconds=2)) is None
    # Even when the schedule's row says it is still due (restored, or read before the
    # first run committed), the idempotency key gives the same workflow back.
    due_now(schedule, due)
    again = engine.call(schedules.schedule_fire, schedule.pk, now=due + timedelta(seconds=3))
    assert again.pk == first.pk
    assert Workflow.objects.filter(schedule=schedule).count() == 1


def test_after_an_outage_only_the_latest_missed_run_starts(engine):
    schedule = add(expression="0 * * * *")
    due_now(schedule, utc(2026, 1, 1, 6))  # no cluster ran from 05:30 to 09:20
    result = engine.call(schedules.tick, now=utc(2026, 1, 1, 9, 20))
    assert result["started"] == 1
    workflow = Workflow.objects.get(schedule=schedule)
    assert workflow.idempotency_key.endswith(":2026-01-01T09:00:00+00:00")
    assert reload_schedule(schedule).next_run_at == utc(2026, 1, 1, 10)


def fires_queued(engine) -> list[tuple]:
    """Take the schedules' run jobs off the broker (their due times are past: it gives them at
    once) and return their arguments; the workflows' own jobs are run."""
    fires = []
    for job in engine.pending():
        if job["func"] == schedules.FIRE:
            fires.append(tuple(job["args"]))
        else:
            engine.run(job)
    return fires


def test_a_schedule_every_minute_starts_one_run_each_minute_on_the_minute(engine):
    schedule = engine.call(
        schedules.schedule_save,
        WorkflowSchedule(name="every minute", cron="* * * * *", time_zone="UTC", tasks=[{"type": "echo"}]),
        now=utc(2026, 1, 1, 10, 0, 30),
    )
    assert schedule.next_run_at == utc(2026, 1, 1, 10, 1)
    assert fires_queued(engine) == [(schedule.pk,)], "a job at the run's due time, before any tick"
    # The ticks between the runs start nothing; each queues the run due before the next tick.
    assert engine.call(schedules.tick, now=utc(2026, 1, 1, 10, 0, 45)) == {"started": 0, "queued": 1}
    assert fires_queued(engine) == [(schedule.pk,)]
    for minute in (1, 2, 3):
        due = utc(2026, 1, 1, 10, minute)
        # The run's job, a fraction of a second late, starts it; its twin (the tick's) finds it started.
        workflow = engine.call(schedules.schedule_fire, schedule.pk, now=due + timedelta(seconds=0.3))
        assert workflow.idempotency_key == schedules.run_key(schedule, due)
        assert engine.call(schedules.schedule_fire, schedule.pk, now=due + timedelta(seconds=0.6)) is None
        assert reload_schedule(schedule).next_run_at == due + timedelta(minutes=1)
        assert fires_queued(engine) == [(schedule.pk,)], "the next run's job, queued by this one"
        assert engine.call(schedules.tick, now=due + timedelta(seconds=30)) == {"started": 0, "queued": 1}
        assert fires_queued(engine) == [(schedule.pk,)]
    fired = Workflow.objects.filter(schedule=schedule).order_by("created_at")
    assert [w.idempotency_key for w in fired] == [
        schedules.run_key(schedule, utc(2026, 1, 1, 10, minute)) for minute in (1, 2, 3)
    ]
    engine.drain()
    assert {w.state for w in fired} == {State.COMPLETE}


def test_a_tick_with_nothing_due_costs_two_queries(db, django_assert_num_queries):
    add(expression="0 3 * * *")
    with django_assert_num_queries(2):  # runs due now; runs due before the next tick
        assert schedules.tick() == {"started": 0, "queued": 0}


def test_saving_a_schedule_keeps_a_run_started_meanwhile(engine):
    schedule = add(expression="*/5 * * * *")
    form_copy = reload_schedule(schedule)  # read by a form before the run
    due = due_now(schedule, utc(2026, 1, 1, 10, 5)).next_run_at
    engine.call(schedules.schedule_fire, schedule.pk, now=due)
    form_copy.input = {"changed": True}
    schedules.schedule_save(form_copy)
    assert reload_schedule(schedule).last_run_at == due


def test_a_tick_queues_a_job_at_the_due_time_of_a_run_due_soon(engine):
    now = timezone.now()
    schedule = due_now(add(expression="0 0 1 1 *"), now + timedelta(seconds=1))
    assert engine.call(schedules.tick, now=now) == {"started": 0, "queued": 1}
    assert engine.broker.delayed_size() == 1
    engine.drain(wait=5)  # the job runs once due, and starts the run
    workflow = Workflow.objects.get(schedule=schedule)
    assert workflow.state == State.COMPLETE
    assert reload_schedule(schedule).next_run_at > now


def test_a_paused_schedule_starts_nothing_and_resumes_from_its_next_due_time(engine):
    schedule = add(expression="* * * * *")
    schedules.schedule_pause(schedule)
    assert reload_schedule(schedule).next_run_at is None
    assert engine.call(schedules.tick, now=timezone.now() + timedelta(hours=1)) == {"started": 0, "queued": 0}
    resumed = schedules.schedule_resume(reload_schedule(schedule))
    assert timezone.now() < resumed.next_run_at <= timezone.now() + timedelta(minutes=1)
    assert not Workflow.objects.exists()


def test_a_run_that_cannot_start_is_recorded_and_the_schedule_moves_on(engine):
    schedule = add(expression="0 * * * *")
    WorkflowSchedule.objects.filter(pk=schedule.pk).update(definition="retired", next_run_at=utc(2026, 1, 1, 6))
    assert engine.call(schedules.tick, now=utc(2026, 1, 1, 6, 0, 5)) == {"started": 0, "queued": 0}
    schedule = reload_schedule(schedule)
    assert "unknown workflow definition 'retired'" in schedule.last_error
    assert schedule.next_run_at == utc(2026, 1, 1, 7)


def test_removing_a_schedule_keeps_the_workflows_it_started(engine):
    schedule = add()
    workflow = engine.call(schedules.schedule_run_now, schedule, actor=Actor.CLI)
    schedules.schedule_remove(schedule)
    assert reload(workflow).schedule is None


def test_the_due_check_runs_every_minute_from_one_django_q2_schedule(engine):
    call_command("migrate", verbosity=0)
    [check] = Schedule.objects.filter(name=schedules.TICK_SCHEDULE)
    assert (check.func, check.schedule_type, check.minutes, check.repeats) == (schedules.TICK, Schedule.MINUTES, 1, -1)
    # What django-q2's scheduler runs is the tick: it starts a run that fell due.
    schedule = due_now(add(expression="* * * * *"), timezone.now() - timedelta(minutes=3))
    before = timezone.now()
    engine.call(pydoc.locate(check.func))
    latest = {cron.latest_run("* * * * *", "UTC", moment) for moment in (before, timezone.now())}  # a minute may turn
    [workflow] = Workflow.objects.filter(schedule=schedule)
    assert workflow.idempotency_key in {schedules.run_key(schedule, due) for due in latest}


# --- CLI -------------------------------------------------------------------------------------


def cli(engine, *args) -> str:
    out = StringIO()
    with engine.capture(execute=True):
        call_command("workflow", "schedule", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_cli_adds_lists_pauses_resumes_and_removes_a_schedule(engine):
    added = json.loads(
        cli(engine, "add", "--name", "reports", "--cron", "0 9 * * 1-5", "--timezone", PARIS,
            "--input", '{"x": 1}', "--tasks", '[{"type": "echo"}]', "--json")
    )  # fmt: skip
    assert (added["cron"], added["time_zone"], added["input"]) == ("0 9 * * 1-5", PARIS, {"x": 1})
    assert added["enabled"] is True
    assert datetime.fromisoformat(added["next_run_at"]) > timezone.now()
    listed = cli(engine, "list")  # the cron in words, the next run in the schedule's own zone
    assert "reports" in listed and "At 09:00 on Monday to Friday" in listed and PARIS in listed
    cli(engine, "pause", "reports")
    [listed] = json.loads(cli(engine, "list", "--json"))
    assert (listed["enabled"], listed["next_run_at"]) == (False, None)
    assert "next run" in cli(engine, "resume", "reports")
    cli(engine, "remove", "reports")
    assert json.loads(cli(engine, "list", "--json")) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cron", "* * *"], "cron: '* * *' has 3 fields"),
        (["--cron", "@daily", "--timezone", "Nowhere/City"], "time_zone: 'Nowhere/City' is not a known time zone"),
        (["--cron", "@daily", "--input", "{"], "--input is not valid JSON"),
    ],
)
def test_the_cli_refuses_bad_input_with_the_reason(engine, args, says):
    with pytest.raises(CommandError, match=says.replace("*", r"\*")):
        cli(engine, "add", "--name", "x", *args)
    assert not WorkflowSchedule.objects.exists()


def test_the_cli_names_a_schedule_it_cannot_find(engine):
    with pytest.raises(CommandError, match="no schedule named 'ghost'"):
        cli(engine, "pause", "ghost")


# --- Admin -----------------------------------------------------------------------------------


def test_the_admin_lists_schedules_with_a_link_to_their_workflows(engine, admin_client):
    schedule = add(expression="*/10 * * * *", zone=PARIS)
    engine.call(schedules.schedule_run_now, schedule, actor=Actor.CLI)
    page = admin_client.get(CHANGELIST)
    assert page.status_code == 200
    [row] = dom.parse(page).select("#result_list tbody tr")
    assert "*/10 * * * * Every 10 minutes" in row.texts("td")
    due = cron.next_run("*/10 * * * *", PARIS, timezone.now()).astimezone(ZoneInfo(PARIS))
    assert row.one("td.field-next_run").text == f"{due:%Y-%m-%d %H:%M} Europe/Paris"
    link = f"?schedule__id__exact={schedule.pk}"
    assert [a.text for a in row.select(f"a[href$='{link}']")] == ["1 started"]
    workflows = admin_client.get(reverse("admin:workflow_orchestrator_workflow_changelist") + link)
    [workflow] = workflows.context["cl"].result_list
    assert workflow.schedule_id == schedule.pk
    # And the workflow's page links back to its schedule.
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])))
    assert page.select(
        f"a[href='{reverse('admin:workflow_orchestrator_workflowschedule_change', args=[schedule.pk])}']"
    )


def test_the_admin_adds_a_schedule_and_refuses_a_bad_one(engine, admin_client):
    form = {"name": "hourly", "cron": "0 * * * *", "time_zone": "UTC", "definition": "default", "mode": "auto",
            "input": "{}", "tasks": "", "enabled": "on"}  # fmt: skip
    bad = admin_client.post(ADD, {**form, "cron": "0 25 * * *", "time_zone": "Moon/Base"})
    assert bad.status_code == 200
    errors = bad.context["adminform"].form.errors
    assert "out of range" in errors["cron"][0] and "is not a known time zone" in errors["time_zone"][0]
    assert admin_client.post(ADD, form).status_code == 302
    schedule = WorkflowSchedule.objects.get(name="hourly")
    assert schedule.next_run_at is not None and schedule.tasks is None


def test_the_admin_pauses_resumes_and_runs_schedules_now(engine, admin_client):
    schedule = add(expression="0 3 * * *")
    selected = {"_selected_action": [schedule.pk]}
    admin_client.post(CHANGELIST, {**selected, "action": "pause_schedules"})
    assert reload_schedule(schedule).enabled is False
    admin_client.post(CHANGELIST, {**selected, "action": "resume_schedules"})
    assert reload_schedule(schedule).next_run_at is not None
    with engine.capture(execute=True):
        admin_client.post(CHANGELIST, {**selected, "action": "run_schedules_now"})
    workflow = Workflow.objects.get(schedule=schedule)
    assert workflow.transitions.get().actor_label == "admin:admin"
    assert reload_schedule(schedule).next_run_at.hour == 3  # its due runs stay as they were


def flashes(response) -> list[tuple[str, str]]:
    """The messages shown on the page a POST redirects to, as text and with their links."""
    assert response.status_code == 302, response.status_code
    return [(message.level_tag, str(message.message)) for message in response.wsgi_request._messages]


def row_button(page, schedule, operation: str):
    form_id = "schedule-row-form"
    button = dom.parse(page).one(f"#schedule-{schedule.pk}-{operation}")
    assert button["form"] == form_id and button["type"] == "submit"
    return button


def test_the_admin_s_row_buttons_pause_resume_and_run_a_schedule(engine, admin_client):
    schedule = add(name="nightly import", expression="30 2 * * *", zone=PARIS)
    page = admin_client.get(CHANGELIST + "?q=nightly")
    assert dom.parse(page).one("#schedule-row-form input[name=csrfmiddlewaretoken]")
    assert dom.parse(page).one("#result_list td.field-cron_in_words").text == "30 2 * * * At 02:30 every day"
    pause = row_button(page, schedule, "pause")
    assert pause.text == "Pause" and pause["aria-label"] == "Pause nightly import"
    answer = admin_client.post(pause["formaction"], {"changelist_query": "?q=nightly"})
    assert answer["Location"] == CHANGELIST + "?q=nightly"  # back to the list as it was
    assert flashes(answer) == [("success", "nightly import is paused: it starts nothing until it is resumed.")]
    assert reload_schedule(schedule).enabled is False

    page = admin_client.get(CHANGELIST)
    assert dom.parse(page).one("#result_list td.field-next_run").text == "— (paused)"
    assert not dom.parse(page).select(f"#schedule-{schedule.pk}-pause")
    answer = admin_client.post(row_button(page, schedule, "resume")["formaction"])
    [(level, text)] = flashes(answer)
    due = reload_schedule(schedule).next_run_at.astimezone(ZoneInfo(PARIS))
    assert (level, text) == ("success", f"nightly import is resumed: next run {due:%Y-%m-%d} 02:30 Europe/Paris.")

    page = admin_client.get(answer["Location"])  # shows the message, and the Pause button again
    assert row_button(page, schedule, "pause")
    with engine.capture(execute=True):
        answer = admin_client.post(row_button(page, schedule, "run")["formaction"])
    workflow = Workflow.objects.get(schedule=schedule)
    [(level, text)] = flashes(answer)
    link = reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])
    assert level == "success" and f'<a href="{link}">workflow {workflow.pk}</a>' in text
    shown = dom.parse(admin_client.get(answer["Location"]))
    assert shown.one(f".messagelist a[href='{link}']").text == f"workflow {workflow.pk}"


def test_the_row_buttons_need_the_change_permission_and_a_post(engine, admin_client, django_user_model):
    schedule = add()
    pause = reverse("admin:workflow_orchestrator_workflowschedule_pause", args=[schedule.pk])
    assert admin_client.get(pause).status_code == 405
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflowschedule"))
    admin_client.force_login(viewer)
    page = admin_client.get(CHANGELIST)
    assert page.status_code == 200 and not dom.parse(page).select("#result_list .schedule-buttons")
    for operation in ("pause", "resume", "run"):
        url = reverse(f"admin:workflow_orchestrator_workflowschedule_{operation}", args=[schedule.pk])
        assert admin_client.post(url).status_code == 403
    assert reload_schedule(schedule).enabled is True and not Workflow.objects.exists()


def test_a_row_button_for_a_schedule_gone_goes_back_with_a_message(engine, admin_client):
    gone = reverse("admin:workflow_orchestrator_workflowschedule_run", args=[404])
    answer = admin_client.post(gone)
    assert answer.status_code == 302
    assert "doesn’t exist" in flashes(answer)[0][1]


def test_the_schedule_s_page_reads_its_cron_and_lists_its_next_runs_in_its_zone(engine, admin_client):
    schedule = add(expression="0 9 * * 1-5", zone=PARIS)
    page = dom.parse(
        admin_client.get(reverse("admin:workflow_orchestrator_workflowschedule_change", args=[schedule.pk]))
    )
    assert page.one(".field-cron_words .readonly").text == "At 09:00 on Monday to Friday"
    runs = page.one(".field-next_runs .readonly").text.split(" Europe/Paris")
    assert len([run for run in runs if run.strip()]) == 5
    assert all(run.strip().endswith("09:00") for run in runs if run.strip())


# --- On a real cluster -------------------------------------------------------------------------


def _fired_by(schedule) -> list[Workflow]:
    return list(Workflow.objects.filter(schedule=schedule).order_by("created_at"))


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_two_clusters_firing_one_run_start_one_workflow(cluster):
    schedule = add(name="shared", expression="0 0 1 1 *")
    due = timezone.now() + timedelta(seconds=4)
    due_now(schedule, due)
    # Both clusters get the run's job several times over, as if each had queued it.
    duplicates = [queue.Job(schedules.FIRE, (schedule.pk,), f"schedule-{schedule.pk}", eta=due) for _ in range(6)]
    queue.enqueue(duplicates)
    cluster()
    cluster()
    wait_for(lambda: reload_schedule(schedule).last_run_at == due, 60, "the run to start")
    broker = queue.broker()
    wait_for(lambda: broker.queue_size() == 0 and not broker.delayed_size(), 30, "every duplicate job to be taken")
    wait_for(lambda: Workflow.objects.filter(state=State.COMPLETE).exists(), 30, "the run to end")
    [workflow] = _fired_by(schedule)
    assert workflow.idempotency_key == schedules.run_key(schedule, due)
