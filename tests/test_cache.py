"""Snakemake's between-workflow cache (`--cache`, SNAKEMAKE_OUTPUT_CACHE) across clones of the project: a second clone
restores the data and the teacher that the first made and trains what differs; what it restores is checked by `fgkd
verify` and becomes a private copy, so that writing onto a results file never writes into the cache; a damaged entry
is refused in one line naming it."""

import hashlib
import os
import shutil

import yaml

from fixtures import make_cub
from test_workflow import project_copy, run

TEACHER = "results/synthetic/resnet10/seed0/teacher/model.pt"
VERIFIED = "results/synthetic/resnet10/seed0/teacher/verified.json"  # the target: the teacher, checked
TEACHER_LOG = "logs/train/synthetic/resnet10/seed0/teacher.log"
VERIFY_LOG = "logs/verify/synthetic/resnet10/seed0/teacher.log"


def cached_run(project, cache, *args, check=True):
    os.environ["SNAKEMAKE_OUTPUT_CACHE"] = str(cache)
    try:
        return run(["snakemake", "--cores", "2", *args, "--cache"], project, check=check)
    finally:
        del os.environ["SNAKEMAKE_OUTPUT_CACHE"]


def entries(cache):
    """Each file of the cache by name, with the sha256 of its bytes."""
    return {p.relative_to(cache).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(cache.rglob("*")) if p.is_file()}


def no_links(project):
    return [str(p) for folder in ("data", "results") for p in (project / folder).rglob("*") if p.is_symlink()]


def test_a_second_clone_restores_checked_private_copies_and_nothing_writes_into_the_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    first, second, other = (project_copy(tmp_path / name) for name in ("first", "second", "other"))
    cached_run(first, cache, VERIFIED)
    assert "done, " in (first / TEACHER_LOG).read_text()  # trained here
    assert no_links(first) == []  # stored in the cache, kept here as copies
    stored = entries(cache)
    assert any(name.endswith("_model.pt") for name in stored)

    result = cached_run(second, cache, TEACHER)  # a target that no check reads: the links go when the run ends
    output = result.stdout + result.stderr
    assert no_links(second) == [] and entries(cache) == stored
    result = cached_run(second, cache, VERIFIED)
    output += result.stdout + result.stderr
    for restored in ("data/prepared/synthetic/manifest.parquet", TEACHER):
        assert f"Symlinking output file {restored}" in output, output[-3000:]
    assert (second / TEACHER_LOG).read_text() == ""  # Snakemake makes the log file; nothing ran to write it
    assert (second / TEACHER).read_bytes() == (first / TEACHER).read_bytes()
    assert no_links(second) == []

    config = other / "config" / "config.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["train"]["lr"] = 0.02  # another teacher on the same data
    config.write_text(yaml.safe_dump(settings))
    result = cached_run(other, cache, VERIFIED)
    assert "Symlinking output file data/prepared/synthetic/manifest.parquet" in result.stdout + result.stderr
    assert "done, " in (other / TEACHER_LOG).read_text()  # trained here
    assert (other / TEACHER).read_bytes() != (first / TEACHER).read_bytes()

    # An ordinary cp onto a results file (before: a link into the cache, so every later clone restored the other
    # experiment's teacher as this one).
    before = entries(cache)
    shutil.copyfile(other / TEACHER, second / TEACHER)
    shutil.copyfile(other / "data/prepared/synthetic/manifest.parquet", second / "data/prepared/synthetic/x.parquet")
    assert entries(cache) == before

    # A damaged entry (written through a link by an earlier fgkd, or by hand): the teacher of lr 0.02 in the place
    # of lr 0.05's. A new clone refuses it in one line naming the entry, and nothing downstream runs.
    model_entry = next(cache / name for name, digest in before.items()
                       if name.endswith("_model.pt") and digest == hashlib.sha256(
                           (first / TEACHER).read_bytes()).hexdigest())
    history_entry = model_entry.with_name(model_entry.name.replace("_model.pt", "_history.parquet"))
    shutil.copyfile(other / TEACHER, model_entry)
    shutil.copyfile(other / TEACHER.replace("model.pt", "history.parquet"), history_entry)
    third = project_copy(tmp_path / "third")
    failed = cached_run(third, cache, "results/synthetic/resnet10/seed0/teacher/logits.parquet", check=False)
    assert failed.returncode != 0
    errors = (third / VERIFY_LOG).read_text().strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"Error: {TEACHER}: the model of teacher with config hash "), errors
    assert f"restored from Snakemake's cache ({history_entry}, {model_entry}), whose entry does not belong" in errors[0]
    assert not (third / "results/synthetic/resnet10/seed0/teacher/logits.parquet").exists()


def test_cache_without_its_folder_is_one_line(tmp_path):
    project = project_copy(tmp_path / "project")
    os.environ.pop("SNAKEMAKE_OUTPUT_CACHE", None)
    result = run(["snakemake", "--cores", "1", "all", "--cache", "--dry-run"], project, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-2000:]
    assert "--cache needs the cache's folder in the environment variable SNAKEMAKE_OUTPUT_CACHE" in errors[0]
    assert "Traceback" not in result.stderr


def test_a_raw_folder_under_cache_is_one_line_naming_the_fix(tmp_path):
    project = project_copy(tmp_path / "project")
    make_cub(project / "data" / "raw" / "birds")
    (project / "birds.yaml").write_text(yaml.safe_dump(
        {"datasets": {"birds": {"format": "cub", "raw": "data/raw/birds"}}, "run_datasets": ["birds"]}))
    result = cached_run(project, tmp_path, "all", "--configfile", "config/config.yaml", "birds.yaml", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-2000:]
    assert "datasets.birds.raw: data/raw/birds is a folder" in errors[0] and "tar -cf" in errors[0]
    assert "Traceback" not in result.stderr
