"""The service's wheel holds the service only: the local Stripe stand-in and the demo are a
development distribution of their own (decision 0054), which no module of the service imports,
and the operator CLI works with or without it."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "src" / "chronote_billing"
DEVELOPMENT_PACKAGES = ("chronote_stripe_local", "chronote_demo")


def test_the_service_wheel_holds_no_stand_in_and_no_demo(tmp_path: Path) -> None:
    # Built from a copy of the sources, so no earlier build directory can add stale files.
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(SERVICE, tree / "src" / "chronote_billing", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check"]
        + ["--wheel-dir", str(tmp_path / "dist"), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("chronote_billing-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "chronote_billing/api/app.py" in names and "chronote_billing/portal/demo_people.json" in names
    assert {name.split("/")[0] for name in names} == {
        "chronote_billing",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    assert not [name for name in names if "stripe_local" in name or name.endswith("/demo.py")]
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "chronote_demo" not in zipfile.ZipFile(wheel).read(entry_points).decode()


def imports_of(path: Path) -> list[str]:
    """The modules a file imports (absolute names; relative imports stay within the service)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


def test_no_service_module_imports_the_development_tools() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in SERVICE.rglob("*.py")
        for name in imports_of(path)
        if name.startswith(DEVELOPMENT_PACKAGES)
    ]
    assert offenders == []


def test_one_module_of_the_service_imports_stripes_sdk() -> None:
    """Stripe is an integration (decision 0055): everything else goes through its client module."""
    importers = sorted(
        str(path.relative_to(SERVICE))
        for path in SERVICE.rglob("*.py")
        if any(name == "stripe" or name.startswith("stripe.") for name in imports_of(path))
    )
    assert importers == ["integrations/stripe/client.py"]


def test_the_operator_cli_works_without_the_development_tools() -> None:
    """With no plugin installed (the entry point group empty), the service's own commands are
    all there and `demo` is not; with the development tools installed, it is."""
    script = """
import importlib.metadata as metadata
every = metadata.entry_points
metadata.entry_points = lambda **kw: [] if kw.get("group") == "chronote_billing.cli" else every(**kw)
from chronote_billing.cli.main import app
import typer.main
names = sorted(c.name for c in typer.main.get_command(app).commands.values())
print(" ".join(names))
"""
    alone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert alone.returncode == 0, alone.stderr
    commands = alone.stdout.split()
    assert {"migrate", "serve", "verify", "reconcile", "openapi"} <= set(commands)
    assert "demo" not in commands and "stripe-local" not in commands

    from typer.main import get_command

    from chronote_billing.cli.main import app

    assert {"demo", "stripe-local"} <= set(get_command(app).commands)  # type: ignore[attr-defined]
