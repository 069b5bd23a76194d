"""README's configuration reference is generated from the schema; fail when they drift."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_config_reference_matches_schema():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py")],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    readme = (ROOT / "README.md").read_text()
    assert out in readme, "README config reference is stale: run python3 scripts/config_reference.py --write"
