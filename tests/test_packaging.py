"""An installed (non-editable) kasmina carries its migrations and contracts and can migrate."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_migrations_and_upgrades_a_database(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("kasmina-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("kasmina/migrations/env.py", "kasmina/migrations/script.py.mako",
                   "kasmina/migrations/versions/0001_event_log.py",
                   "kasmina/migrations/versions/0002_seed_contributions.py",
                   "kasmina/migrations/versions/0003_runs.py", "kasmina/migrations/sqljson.py",
                   "kasmina/migrations/views.py", "kasmina/migrations/appendonly.py",
                   "kasmina/leyline/leyline.proto",
                   "kasmina/leyline/leyline_pb2.py"):
        assert needed in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        f"import sys; sys.path.insert(0, {str(site)!r})\n"
        "import kasmina\n"
        f"assert kasmina.__file__.startswith({str(site)!r}), kasmina.__file__\n"
        "from kasmina.events import migrate, open_store\n"
        "migrate.upgrade('sqlite:///installed.db')\n"
        "print(migrate.current('sqlite:///installed.db'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0003_runs"


def test_known_revisions_are_the_alembic_chain() -> None:
    """The revisions the schema check knows must be exactly the shipped migration chain."""
    from importlib import resources

    from alembic.script import ScriptDirectory

    from kasmina.events.schema import KNOWN_REVISIONS, SCHEMA_REVISION

    scripts = ScriptDirectory(str(resources.files("kasmina.migrations")))
    assert scripts.get_heads() == [SCHEMA_REVISION]
    chain = [rev.revision for rev in scripts.walk_revisions()]
    assert list(reversed(chain)) == list(KNOWN_REVISIONS)


def test_every_package_on_disk_is_listed_in_pyproject() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "kasmina").rglob("__init__.py")}
    on_disk |= {"kasmina.migrations", "kasmina.migrations.versions"}
    assert on_disk <= listed, f"add to pyproject.toml packages: {sorted(on_disk - listed)}"
