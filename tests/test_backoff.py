"""The one backoff of the app: step retries, webhook attempts and the heartbeat all wait
by it, each with its own base, cap and jitter."""

from workflow_orchestrator import services, webhooks
from workflow_orchestrator.backoff import backoff


def test_the_wait_doubles_after_each_failure_up_to_the_cap():
    assert [backoff(failures, base=1, cap=5) for failures in range(1, 6)] == [1, 2, 4, 5, 5]


def test_with_jitter_half_the_wait_is_fixed_and_half_random():
    for failures, full in [(1, 2), (2, 4), (3, 8), (9, 8)]:
        waits = [backoff(failures, base=2, cap=8, jitter=True) for _ in range(50)]
        assert all(full / 2 <= wait <= full for wait in waits)
        assert len(set(waits)) > 1


def test_a_zero_base_never_waits_and_a_long_run_of_failures_stays_at_the_cap():
    assert backoff(3, base=0, cap=10) == 0
    assert backoff(5000, base=0.5, cap=30) == 30, "2 ** 4999 would overflow a float"


def test_step_retries_wait_by_their_settings_with_jitter(settings):
    settings.ORCH_RETRY_BACKOFF, settings.ORCH_RETRY_BACKOFF_MAX = 3, 10
    assert 1.5 <= services.backoff_delay(1) <= 3
    assert 5 <= services.backoff_delay(5) <= 10


def test_webhook_attempts_wait_by_their_settings_exactly(settings):
    settings.ORCH_WEBHOOK_BACKOFF, settings.ORCH_WEBHOOK_BACKOFF_MAX = 3, 10
    assert [webhooks.retry_delay(attempt) for attempt in (1, 2, 3)] == [3, 6, 10]
