"""The documentation holds: the site builds strictly (no broken link or anchor), the README stays a front page, every
command the README and the docs show runs as written (Snakemake commands plan, `fgkd` subcommands and flags exist,
scripts exist), and every repository file they name exists."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from fgkd import __version__
from fgkd.cli import main
from test_paper import paper_project
from test_workflow import BIN, REPO, run

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# A fenced block (``` or ~~~, indented in a list or an admonition too) and its language; shell blocks are checked.
FENCE = re.compile(r"^([ \t]*)(```|~~~)[ \t]*([\w-]*)[^\n]*\n(.*?)^[ \t]*\2[ \t]*$", re.S | re.M)
SHELL = {"", "bash", "sh", "shell", "console"}
# Paths a reader's run makes (results, data, logs, deploy folders) or that stand for the reader's own files.
MADE_BY_A_RUN = ("results/", "data/", "logs/", "deploy/", "runs/", "photos/", "overlays/", "weights/", "docs/results/<")
TOP_LEVEL_FILES = r"Snakefile|dvc\.yaml|mkdocs\.yml|pyproject\.toml|CITATION\.cff|requirements\.lock|LICENSE"
REPOSITORY_PATH = re.compile(rf"^(?:(?:config|workflow|fgkd|tests|scripts|slurm|benchmarks|docs)/\S*|{TOP_LEVEL_FILES})$")


def shell_blocks(text: str) -> list[str]:
    return [textwrap_dedent(block, indent) for indent, _, language, block in FENCE.findall(text) if language in SHELL]


def textwrap_dedent(block: str, indent: str) -> str:
    return "\n".join(line[len(indent):] if line.startswith(indent) else line for line in block.splitlines())


def shown_commands() -> list[tuple[Path, list[str]]]:
    """The words of every command of the pages' shell blocks, and of inline code that starts with `fgkd `:
    continuation lines joined, comments, `$ ` prompts and `VAR=value` prefixes removed, the block's own shell
    variables filled in, one command per part of `&&`, `||`, `|` and `;`."""
    commands = []
    for page in PAGES:
        text = page.read_text()
        lines = [line for block in shell_blocks(text) for line in block.replace("\\\n", " ").splitlines()]
        lines += [span for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text)) if span.startswith("fgkd ")]
        variables = {}
        for line in lines:
            line = re.sub(r"(^|\s)#(\s.*)?$", "", line).strip()
            for part in re.split(r"&&|\|\||\||;", line):
                argv = shlex.split(re.sub(r"^\$\s+", "", part.strip()))
                while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
                    name, value = argv.pop(0).split("=", 1)
                    variables[name] = value
                filled = []
                for word in argv:  # a variable holding several words ($C) gives them all
                    value = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m.group(1), "X"), word)
                    filled.extend(shlex.split(value) if value != word and " " in value else [value])
                if filled:
                    commands.append((page, filled))
    return commands


def commands_of(*programs: str) -> list[tuple[Path, list[str]]]:
    return [(page, argv) for page, argv in shown_commands() if argv[0] in programs]


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
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.M)
    links += re.findall(r"<a [^>]*href=\"([^\"]+)\"", text)
    assert len(links) >= 15
    for link in links:
        target, _, anchor = link.partition("#")
        if link.startswith("http") or not target:
            continue
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_slugs(REPO / target), f"README links to {link}: no such heading"


def heading_slugs(page: Path) -> set[str]:
    """The anchors mkdocs gives a page's headings (python-markdown's toc slugify)."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", h).strip().lower()) for h in headings}


def test_the_citation_names_this_version():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["version"] == __version__ and citation["license"] == "MIT"
    assert "arXiv:2012.11389" in str(citation["preferred-citation"])
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def _subcommands() -> dict[str, click.Command]:
    return {name: main.get_command(click.Context(main), name) for name in main.list_commands(click.Context(main))}


def test_every_fgkd_command_shown_exists_with_its_flags():
    shown = commands_of("fgkd", ".venv/bin/fgkd")
    assert len(shown) >= 15
    check_fgkd_commands(shown)


def check_fgkd_commands(shown: list[tuple[Path, list[str]]]) -> None:
    """Each subcommand exists, each option is one of its own, each value of a choice is among the choices."""
    commands = _subcommands()
    for page, argv in shown:
        if argv[1:] in (["--help"], ["--version"]):
            continue
        name = argv[1]
        assert name in commands, f"{page.name}: fgkd {name} does not exist"
        options = {opt: param for param in commands[name].params for opt in (*param.opts, *param.secondary_opts)}
        options["--help"] = click.Option(["--help"], is_flag=True)
        for at, word in enumerate(argv[2:], start=2):
            flag, _, value = word.partition("=")
            if not flag.startswith("-") or flag == "-":
                continue
            assert flag in options, f"{page.name}: fgkd {name} has no option {flag}"
            param = options[flag]
            if isinstance(param.type, click.Choice) and not getattr(param, "is_flag", False):
                value = value or (argv[at + 1] if at + 1 < len(argv) else None)  # prose may name the flag alone
                assert value is None or value in map(str, param.type.choices), f"{page.name}: fgkd {name} {flag} {value}: not a choice"


def test_every_script_shown_exists():
    shown = {argv[0] for _, argv in shown_commands() if argv[0].startswith(("scripts/", ".venv/bin/"))}
    assert {"scripts/run", "scripts/test", "scripts/benchmark"} <= shown
    for script in shown:
        assert (REPO / script).is_file() or (REPO / ".venv" / "bin" / Path(script).name).is_file(), script


def test_every_repository_file_named_exists():
    """A backquoted path into the repository's own folders, a top-level file, or such a path in a command, names a
    file or folder that is there (globs match)."""
    named = set()
    for page in PAGES:
        candidates = re.findall(r"`([^`\s]+)`", page.read_text())
        candidates += [word for p, argv in shown_commands() if p == page for word in argv]
        for path in candidates:
            path = path.split(":")[0].rstrip("/.,")
            if REPOSITORY_PATH.match(path) and not path.startswith(MADE_BY_A_RUN) and not re.search(r"[{<]", path):
                named.add(path)
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
    shown = {shlex.join(argv) for _, argv in commands_of("snakemake")}
    return sorted(c for c in shown if not set(shlex.split(c)) & set(NOT_PLANNED))


def test_the_snakemake_commands_shown_are_many_and_cover_every_entry_point():
    shown = " ".join(snakemake_commands())
    for needed in ("--profile slurm", "config/paper.yaml", "config/cub-small.yaml", "ablations", "--cache"):
        assert needed in shown, needed


@pytest.mark.parametrize("command", snakemake_commands())
def test_every_snakemake_command_shown_plans(project, command, tmp_path, monkeypatch):
    """Planned in a project with the raw data in place: the config (with its overrides) validates and the DAG
    builds."""
    if "--cache" in command:
        monkeypatch.setenv("SNAKEMAKE_OUTPUT_CACHE", str(tmp_path / "cache"))
    run([*shlex.split(command), "--dry-run", "--quiet", "rules"], project, timeout=600)


def test_a_broken_command_in_the_docs_would_fail(project, tmp_path):
    """The check itself can fail: a flag that fgkd does not have, and a config override the schema refuses."""
    commands = _subcommands()
    flags = {opt for param in commands["train"].params for opt in param.opts}
    assert "--epcohs" not in flags
    result = run(["snakemake", "--cores", "all", "all", "--config", "students=0", "--dry-run", "--quiet", "rules"],
                 project, check=False)
    assert result.returncode != 0 and "students" in result.stdout + result.stderr


def test_every_dvc_command_and_unplanned_snakemake_command_shown_is_run_by_a_test():
    """What cannot be planned here is run by test_workflow: each `dvc` subcommand shown, and the Snakemake flags
    of NOT_PLANNED."""
    tests = (REPO / "tests" / "test_workflow.py").read_text()
    shown = [argv for _, argv in commands_of("dvc")]
    assert len(shown) >= 8
    for argv in shown:
        called = ", ".join(f'"{word}"' for word in argv[:3] if not word.startswith(("-", "<", "'", "config/", "data/")))
        called = called if argv[1] != "exp" else ", ".join(f'"{word}"' for word in argv[:3])
        assert called in tests, f"{' '.join(argv)}: no test runs {called}"
    for flag in NOT_PLANNED:
        assert f'"{flag}"' in tests, flag


def test_the_extraction_reads_every_form_a_page_shows_a_command_in(tmp_path, monkeypatch):
    """Fences after a text block, console and tilde fences, fences indented in a list, `$ ` prompts, VAR=value
    prefixes, a block's own variables, pipes and `||`, and inline `fgkd ...`: each command is read."""
    page = tmp_path / "page.md"
    page.write_text("```text\nsome output\n```\n\nThen:\n\n```bash\nfgkd train --epcohs 3\n```\n\n"
                    "```console\n$ fgkd predict --wich best\n```\n\n~~~sh\nPYTHONPATH=. fgkd export --formt onnx\n~~~\n\n"
                    "1. Run:\n\n    ```bash\n    C=\"--backbone resnet9 --lr 1\"\n    fgkd train $C || snakemake -n all\n"
                    "    ```\n\nInline: `fgkd classify --topk 3`.\n")
    monkeypatch.setattr(sys.modules[__name__], "PAGES", [page])
    assert [argv for _, argv in shown_commands()] == [
        ["fgkd", "train", "--epcohs", "3"], ["fgkd", "predict", "--wich", "best"],
        ["fgkd", "export", "--formt", "onnx"], ["fgkd", "train", "--backbone", "resnet9", "--lr", "1"],
        ["snakemake", "-n", "all"], ["fgkd", "classify", "--topk", "3"]]
    with pytest.raises(AssertionError, match="has no option --epcohs"):
        check_fgkd_commands(commands_of("fgkd"))
    with pytest.raises(AssertionError, match="--backbone resnet9: not a choice"):
        check_fgkd_commands([(page, ["fgkd", "train", "--backbone", "resnet9"])])
