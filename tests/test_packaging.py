"""fgkd installs like a package: every third-party import is a declared dependency, and the built wheel runs
with nothing but what it declares."""

import ast
import email.parser
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement  # packaging comes with pytest
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}


def third_party_imports() -> dict[str, list[str]]:
    """{top-level module: [files importing it]} over every import statement of fgkd's sources, those inside
    functions included; relative imports, the standard library and fgkd itself left out."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "fgkd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "fgkd" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    # Import names map to distributions through the installed packages' own records (PIL -> pillow,
    # yaml -> PyYAML), not a hand-written table.
    providers = metadata.packages_distributions()
    imports = third_party_imports()
    assert {"torch", "matplotlib", "PIL"} <= imports.keys(), "the import scan missed imports fgkd is known to have"
    dependencies = declared()
    undeclared = {}
    for module, files in imports.items():
        distributions = {canonicalize_name(name) for name in providers.get(module, [])}
        if not distributions & dependencies:
            undeclared[module] = (sorted(distributions) or ["no installed distribution"], sorted(set(files)))
    assert not undeclared, "imported but not in pyproject.toml's dependencies: " + "; ".join(
        f"{module} (from {', '.join(dists)}) in {', '.join(files)}" for module, (dists, files) in undeclared.items())


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The Requires-Dist lines of a built wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        fields = email.parser.HeaderParser().parsestr(archive.read(name).decode())
    return [Requirement(line) for line in fields.get_all("Requires-Dist") or []]


def closure(requirements: list[Requirement]) -> list[metadata.Distribution]:
    """The installed distributions that `requirements` pull in, transitively, as pip would resolve them here
    (markers evaluated for this interpreter, extras followed)."""
    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(requirement, "") for requirement in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        try:
            found.setdefault(name, metadata.distribution(requirement.name))
        except metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} (needed through {requirement}) is not installed: is it in the lock?")
        for wanted in {"", *requirement.extras} - {e for n, e in done if n == name}:
            done.add((name, wanted))
            todo += [(Requirement(line), wanted) for line in found[name].requires or []]
    return list(found.values())


def expose(distributions: list[metadata.Distribution], site: Path) -> None:
    """Make `site` hold exactly these installed distributions: a symbolic link per file of each (its code and
    its .dist-info), and no other package of the environment running the tests."""
    for distribution in distributions:
        for file in distribution.files or []:
            if file.parts[0] == "..":  # console scripts in bin/: not needed to import
                continue
            source = Path(distribution.locate_file(file))
            target = site / file
            if source.exists() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source)


# Without PYTHONPATH, and (the callers) outside the repository: a checkout on the path, with the fgkd.egg-info of
# an editable install, would stand in for the installed package.
CLEAN_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run(*command, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, cwd=cwd, env=CLEAN_ENV)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_runs_with_only_its_declared_dependencies(tmp_path):
    """Builds the wheel from the files git would ship (pip's PEP 517 build, as `pip install .` does: it fetches
    the build backend setuptools from the index) and installs it with `pip install --no-index
    --constraint requirements.lock` into a fresh venv, without copying or downloading a single dependency:
    the venv's site-packages holds links to exactly the distributions that the wheel's own Requires-Dist pulls
    in, transitively, taken from the environment running this test (the lock's). Then `fgkd --help` runs and
    every fgkd module imports there.

    Proves: the wheel holds every module of the checkout; what it declares (and what that declares) is enough
    to import all of fgkd, so an undeclared import (matplotlib in fgkd.report) fails here; pip accepts the
    installed versions under the lock's pins and `pip check` is clean.
    Does not prove: that the index serves installable files for these pins on another Python or platform
    (scripts/test's install on 3.12 and 3.13 does), nor imports that fgkd makes only inside functions (the
    source scan above covers those). Native libraries (torch's CUDA ones) are found through the links' real
    paths, so a library one package loads from another's folder is not checked."""
    source = tmp_path / "source"
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=REPO).stdout
    for relative in filter(None, listed.split("\0")):
        if (REPO / relative).is_file():
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / relative, source / relative)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", tmp_path / "wheels", source,
        cwd=tmp_path)
    [wheel] = (tmp_path / "wheels").glob("fgkd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.endswith(".py")}
    assert shipped == {str(path.relative_to(source)) for path in (source / "fgkd").rglob("*.py")}

    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                    cwd=tmp_path).stdout.strip())
    expose(closure(wheel_requirements(wheel)), site)
    pip = [sys.executable, "-m", "pip", "--python", python]
    run(*pip, "install", "--quiet", "--no-index", "--constraint", LOCK, wheel, cwd=tmp_path)
    run(*pip, "check", cwd=tmp_path)

    assert "Usage: fgkd" in run(fresh / "bin" / "fgkd", "--help", cwd=tmp_path).stdout
    every_module = ("import importlib, pkgutil, fgkd\n"
                    "for module in pkgutil.walk_packages(fgkd.__path__, 'fgkd.'):\n"
                    "    if module.name != 'fgkd.__main__':\n"
                    "        importlib.import_module(module.name)\n"
                    "print(fgkd.__file__)")
    imported_from = Path(run(python, "-c", every_module, cwd=tmp_path).stdout.strip())
    assert imported_from.is_relative_to(site)
