"""Snakemake's between-workflow cache (`--cache`, SNAKEMAKE_OUTPUT_CACHE) across two clones of the project: the
second restores the data and the teacher that the first made, and trains what differs."""

import os

import yaml

from fixtures import make_cub
from test_workflow import project_copy, run

TEACHER = "results/synthetic/resnet10/seed0/teacher/model.pt"
TEACHER_LOG = "logs/train/synthetic/resnet10/seed0/teacher.log"


def cached_run(project, cache, *args, check=True):
    os.environ["SNAKEMAKE_OUTPUT_CACHE"] = str(cache)
    try:
        return run(["snakemake", "--cores", "2", *args, "--cache"], project, check=check)
    finally:
        del os.environ["SNAKEMAKE_OUTPUT_CACHE"]


def test_a_second_clone_restores_the_data_and_the_teacher_and_trains_only_what_differs(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    first, second, other = (project_copy(tmp_path / name) for name in ("first", "second", "other"))
    cached_run(first, cache, TEACHER)
    assert "done, " in (first / TEACHER_LOG).read_text()  # trained here
    assert any(cache.iterdir())

    result = cached_run(second, cache, TEACHER)
    output = result.stdout + result.stderr
    for restored in ("data/raw/synthetic", "data/prepared/synthetic/manifest.parquet", TEACHER):
        assert f"Symlinking output file {restored}" in output, output[-3000:]
    assert (second / TEACHER_LOG).read_text() == ""  # Snakemake makes the log file; nothing ran to write it
    assert (second / TEACHER).read_bytes() == (first / TEACHER).read_bytes()

    config = other / "config" / "config.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["train"]["lr"] = 0.02  # another teacher on the same data
    config.write_text(yaml.safe_dump(settings))
    result = cached_run(other, cache, TEACHER)
    assert "Symlinking output file data/prepared/synthetic/manifest.parquet" in result.stdout + result.stderr
    assert "done, " in (other / TEACHER_LOG).read_text()  # trained here
    assert (other / TEACHER).read_bytes() != (first / TEACHER).read_bytes()


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
