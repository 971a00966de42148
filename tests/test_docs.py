"""The documentation holds: the site builds strictly (no broken link or anchor), the README stays a front page, every
command the README and the docs show runs as written (Snakemake commands plan, `fgkd` subcommands and flags exist,
scripts exist), and every repository file they name exists."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml

from fgkd import __version__
from fgkd.cli import main
from test_paper import paper_project
from test_workflow import BIN, REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(?:bash|sh)?\n(.*?)^```", re.S | re.M)
# Paths a reader's run makes (results, data, logs, deploy folders) or that stand for the reader's own files.
MADE_BY_A_RUN = ("results/", "data/", "logs/", "deploy/", "runs/", "photos/", "overlays/", "weights/", "docs/results/<")


def shown_commands() -> list[tuple[Path, str]]:
    """Every command line of the pages' shell blocks: continuation lines joined, comments and prompts removed."""
    commands = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s#\s.*$", "", line).strip()
                if line and not line.startswith("#"):
                    commands.extend((page, part.strip()) for part in re.split(r"&&|;", line) if part.strip())
    return commands


def words(command: str) -> list[str]:
    return shlex.split(command.replace("$R", "R").replace("$D", "D").replace("$C", ""))


def test_the_site_builds_strictly(tmp_path):
    """mkdocs --strict fails on a broken link, a missing anchor, a missing snippet file or a page outside the nav."""
    result = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(BIN)})
    assert result.returncode == 0, result.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "fgkd train" in cli and "--orth-weight" in cli  # the CLI reference is generated from the click app
    assert "fgkd publish-results" not in cli  # a maintainer's command, hidden
    config = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "kd_temperature" in config  # config/README.md, included


def test_the_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert text.index("Evidence so far") < text.index("## Install and run")
    assert "scripts/run " in text and "scripts/test " in text
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (REPO / target).exists(), f"README links to {target}, which does not exist"


def test_the_citation_names_this_version():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["version"] == __version__ and citation["license"] == "MIT"
    assert "arXiv:2012.11389" in str(citation["preferred-citation"])
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def _subcommands() -> dict[str, click.Command]:
    return {name: main.get_command(click.Context(main), name) for name in main.list_commands(click.Context(main))}


def test_every_fgkd_command_shown_exists_with_its_flags():
    commands = _subcommands()
    shown = [(page, words(c)) for page, c in shown_commands() if c.startswith(("fgkd ", ".venv/bin/fgkd "))]
    assert len(shown) >= 10
    for page, argv in shown:
        name = argv[1]
        assert name in commands, f"{page.name}: fgkd {name} does not exist"
        flags = {opt for param in commands[name].params for opt in (*param.opts, *param.secondary_opts)}
        for word in argv[2:]:
            flag = word.split("=", 1)[0]
            if flag.startswith("--"):
                assert flag in flags, f"{page.name}: fgkd {name} has no option {flag}"


def test_every_script_shown_exists():
    shown = {words(c)[0] for _, c in shown_commands() if c.startswith(("scripts/", ".venv/bin/"))}
    assert {"scripts/run", "scripts/test", "scripts/benchmark"} <= shown
    for script in shown:
        assert (REPO / script).is_file() or (REPO / ".venv" / "bin" / Path(script).name).is_file(), script


def test_every_repository_file_named_exists():
    """A backquoted path into the repository's own folders names a file or folder that is there (globs match)."""
    named = set()
    for page in PAGES:
        for path in re.findall(r"`((?:config|workflow|fgkd|tests|scripts|slurm|benchmarks|docs)/[^`\s]*)`",
                               page.read_text()):
            if not path.startswith(MADE_BY_A_RUN) and not re.search(r"[{<]", path):
                named.add(path.rstrip("/.,"))
    assert len(named) >= 30
    missing = [path for path in sorted(named) if not list(REPO.glob(path))]
    assert not missing, f"named in the docs, not in the repository: {missing}"


# Snakemake commands that cannot be planned as shown, and where they are tested instead.
NOT_PLANNED = {
    "--report": "needs a finished run: test_workflow builds the report",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with the shipped configs (config/config.yaml the default) and the raw data every config names."""
    base = tmp_path_factory.mktemp("docs")
    project = paper_project(base, [])
    shutil.copy2(REPO / "config" / "config.yaml", project / "config" / "config.yaml")  # the default, not tiny.yaml
    return project


def snakemake_commands() -> list[str]:
    shown = {c for _, c in shown_commands() if c.startswith("snakemake ")}
    return sorted(c for c in shown if not any(flag in c for flag in NOT_PLANNED))


def test_the_snakemake_commands_shown_are_many_and_cover_every_entry_point():
    shown = " ".join(snakemake_commands())
    for needed in ("--profile slurm", "config/paper.yaml", "config/cub-small.yaml", "ablations", "--cache"):
        assert needed in shown, needed


@pytest.mark.parametrize("command", snakemake_commands())
def test_every_snakemake_command_shown_plans(project, command, tmp_path):
    """Planned in a project with the raw data in place: the config (with its overrides) validates and the DAG
    builds."""
    env_cache = {"SNAKEMAKE_OUTPUT_CACHE": str(tmp_path / "cache")} if "--cache" in command else {}
    argv = [*words(command), "--dry-run", "--quiet", "rules"]
    result = run_with(argv, project, env_cache)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def run_with(argv, cwd, env):
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env}
    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def test_a_broken_command_in_the_docs_would_fail(project, tmp_path):
    """The check itself can fail: a flag that fgkd does not have, and a config override the schema refuses."""
    commands = _subcommands()
    flags = {opt for param in commands["train"].params for opt in param.opts}
    assert "--epcohs" not in flags
    result = run_with(["snakemake", "--cores", "all", "all", "--config", "students=0", "--dry-run", "--quiet",
                       "rules"], project, {})
    assert result.returncode != 0 and "students" in result.stdout + result.stderr


def test_every_dvc_command_and_unplanned_snakemake_command_shown_is_run_by_a_test():
    """What cannot be planned here is run by test_workflow: each `dvc` subcommand shown, and the Snakemake flags
    of NOT_PLANNED."""
    tests = (REPO / "tests" / "test_workflow.py").read_text()
    shown = [words(c) for _, c in shown_commands() if c.startswith("dvc ")]
    assert len(shown) >= 8
    for argv in shown:
        called = ", ".join(f'"{word}"' for word in argv[:3] if not word.startswith(("-", "<", "'", "config/", "data/")))
        called = called if argv[1] != "exp" else ", ".join(f'"{word}"' for word in argv[:3])
        assert called in tests, f"{' '.join(argv)}: no test runs {called}"
    for flag in NOT_PLANNED:
        assert f'"{flag}"' in tests, flag
