"""The engine's layers, as pyproject.toml's [tool.importlinter] contracts order them: a
module imports only from layers below its own (function-level imports included)."""

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path = ROOT, config: Path | None = None) -> subprocess.CompletedProcess:
    command = [str(LINT_IMPORTS), "--no-cache", *([str(config)] if config else [])]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_every_module_keeps_to_its_layer():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_from_a_higher_layer_breaks_the_contract(tmp_path):
    """The same contract, on a copy of the app where the models import the services
    inside a function (the way cycles used to be dodged): it must fail and say where."""
    for package in ("workflow_orchestrator", "orchestrator_dev", "orchestrator_site"):
        subprocess.run(["cp", "-r", str(ROOT / package), str(tmp_path / package)], check=True)
    models = tmp_path / "workflow_orchestrator" / "models.py"
    models.write_text(
        models.read_text()
        + textwrap.dedent(
            """

            def _dodge():
                from .services import validate_request  # noqa: F401
            """
        )
    )
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())
    result = lint_imports(cwd=tmp_path, config=config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "workflow_orchestrator.models -> workflow_orchestrator.services" in result.stdout


def test_the_contract_places_every_module_of_the_app():
    """import-linter leaves a module the contract does not name unconstrained: every module
    and package of the app must stand in a layer."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [layers] = [contract for contract in config["contracts"] if contract["type"] == "layers"]
    placed = {name.strip() for layer in layers["layers"] for name in re.split(r"[|:]", layer)}
    package = ROOT / "workflow_orchestrator"
    modules = {path.stem for path in package.glob("*.py") if path.stem != "__init__"}
    modules |= {path.parent.name for path in package.glob("*/__init__.py")}
    assert sorted(modules - placed) == []
    assert sorted(placed - modules) == []
