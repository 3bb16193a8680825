"""The pinned requirements and the distribution's declared dependencies agree: what the test
suite runs (requirements.txt) is a set of versions the distribution admits, and `make run`
installs the runtime alone."""

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

TEST_TOOLS = {"pytest", "pytest-django", "pytest-timeout", "schemathesis", "hypothesis", "playwright", "ruff"}


def pins(path: str) -> dict[str, str]:
    """name: version of each `name==version` line of a requirements file."""
    found = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r "):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path}: {line} is not pinned"
            found[canonicalize_name(requirement.name)] = specifier.version
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [item for items in project["optional-dependencies"].values() for item in items]
    return [Requirement(item) for item in [*project["dependencies"], *extras]]


def test_every_declared_dependency_admits_the_version_requirements_txt_pins():
    runtime = pins("requirements.txt")
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in runtime, f"{requirement.name} is declared but not pinned in requirements.txt"
        assert requirement.specifier.contains(runtime[name]), f"{requirement} does not admit {runtime[name]}"


def test_make_run_installs_no_test_tool_and_make_test_installs_them_all():
    assert not TEST_TOOLS & set(pins("requirements.txt"))
    assert set(pins("requirements-dev.txt")) >= TEST_TOOLS
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()
