"""The workflow as the Snakemake catalog expects it: `snakemake --lint` clean, snakefmt-formatted, every config key
documented in config/README.md from the schema, and a conda environment that follows the lock."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_snakemake_lint_finds_nothing():
    result = subprocess.run([BIN / "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_workflow_is_snakefmt_formatted():
    result = subprocess.run([BIN / "snakefmt", "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_config_readme_is_the_schemas_and_documents_every_key():
    result = subprocess.run([sys.executable, REPO / "scripts" / "config_readme.py", "--check"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in (REPO / "config" / "README.md").read_text().splitlines()
            if line.startswith("| `")]
    undocumented = [row[0] for row in rows if not row[1].strip()]
    assert not undocumented, f"keys without a meaning (add a description to the schema): {undocumented}"
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    keys = {row[0].strip("| `") for row in rows}
    assert set(schema["properties"]) <= keys
    assert set(schema["$defs"]["train_options"]["properties"]) <= keys


def test_the_conda_environment_names_the_current_lock():
    """Snakemake rebuilds a conda environment when its file changes; the lock's digest in it makes a new lock do so
    (its post-deploy script installs the lock)."""
    text = (REPO / "workflow" / "envs" / "fgkd.yaml").read_text()
    named = re.search(r"requirements\.lock sha256: ([0-9a-f]{64})", text).group(1)
    assert named == hashlib.sha256((REPO / "requirements.lock").read_bytes()).hexdigest(), (
        "requirements.lock changed: put its sha256 into workflow/envs/fgkd.yaml")
    deploy = (REPO / "workflow" / "envs" / "fgkd.post-deploy.sh").read_text()
    assert "pip install -r requirements.lock" in deploy and "pip install --no-deps -e ." in deploy
    rules = [f for f in (REPO / "workflow" / "rules").glob("*.smk")]
    for rule_file in rules:
        text = rule_file.read_text()
        assert text.count("\nrule ") == text.count('"../envs/fgkd.yaml"'), rule_file.name
