"""What the browser tests share: Debian's chromium driven by playwright, a signed-in admin page on
pytest-django's `live_server` (a thread of the test process on the test database), and the
screenshots the documentation shows (saved in docs/img/ with ORCH_SCREENSHOTS=1).

The fixtures `browser` and `page` are in conftest.py; this module holds the helpers.
"""

from tests.conftest import CHROMIUM_ARGS, PASSWORD, SCREENSHOTS  # noqa: F401  (for the browser tests)
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, Workflow


def start(name: str, tasks: list, **kwargs) -> Workflow:
    workflow, _ = services.workflow_create(name=name, tasks=tasks, actor=Actor.SYSTEM, start=True, **kwargs)
    return workflow


def states(*workflows) -> set[str]:
    return set(Workflow.objects.filter(pk__in=[w.pk for w in workflows]).values_list("state", flat=True))


def screenshot(page, name: str) -> None:
    if SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / name, full_page=True)


def contrast(page, locator) -> float:
    """The WCAG contrast ratio of an element's text against its background, from the colours
    the browser rendered."""
    return page.evaluate(
        """element => {
            const rgb = value => value.match(/[\\d.]+/g).slice(0, 3).map(Number);
            const luminance = ([r, g, b]) => [r, g, b]
                .map(c => c / 255)
                .map(c => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4))
                .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
            const style = getComputedStyle(element);
            const [a, b] = [luminance(rgb(style.color)), luminance(rgb(style.backgroundColor))];
            return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        }""",
        locator.element_handle(),
    )


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def assert_badges_readable(page) -> None:
    badges = page.locator(".badge").all()
    assert badges, "no badge on the page"
    for badge in badges:
        ratio = contrast(page, badge)
        assert ratio >= 4.5, f"{badge.inner_text()!r} has a contrast of {ratio:.2f}:1"
        assert badge.inner_text().strip(), "a badge that tells its meaning by colour alone"


def fetches(page) -> list[str]:
    """The URLs the page fetches from now on (its live updates)."""
    seen = []
    page.on("request", lambda request: seen.append(request.url) if request.resource_type == "fetch" else None)
    return seen
