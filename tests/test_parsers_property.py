"""Property-based: whatever is written into the index files, `prepare` either builds a valid manifest
or stops with a DataError naming the problem. Never another exception, never a partial manifest."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgkd.data.prepare import prepare
from fgkd.errors import DataError
from fixtures import make_aircraft, make_cub

pytestmark = pytest.mark.unit

INDEX_FILES = {
    "cub": ["CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt", "CUB_200_2011/train_test_split.txt",
            "CUB_200_2011/classes.txt"],
    "aircraft": ["fgvc-aircraft-2013b/data/variants.txt", "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
                 "fgvc-aircraft-2013b/data/images_variant_test.txt"],
}
BUILDERS = {"cub": make_cub, "aircraft": make_aircraft}

tokens = st.one_of(
    st.integers(-5, 40).map(str), st.sampled_from(["..", "../../etc/passwd", "/abs/path.jpg", "001.Bird_A", "A300B4",
                                                   "images/../../x.jpg", "1e3", "", " ", "\t", "0", "1"]),
    st.text(min_size=1, max_size=8))
lines = st.one_of(st.lists(tokens, min_size=0, max_size=4).map(lambda t: " ".join(t).encode("utf-8", "surrogatepass")),
                  st.binary(max_size=24))
edits = st.lists(st.tuples(st.sampled_from(["append", "replace", "duplicate", "delete"]), st.integers(0, 50), lines),
                 min_size=1, max_size=4)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    for dataset, build in BUILDERS.items():
        build(base / dataset)
    return base


def mutate(path: Path, changes) -> None:
    rows = path.read_bytes().split(b"\n")
    for kind, position, line in changes:
        index = position % max(len(rows), 1)
        if kind == "append":
            rows.append(line)
        elif kind == "replace" and rows:
            rows[index] = line
        elif kind == "duplicate" and rows:
            rows.insert(index, rows[index])
        elif kind == "delete" and rows:
            rows.pop(index)
    path.write_bytes(b"\n".join(rows))


@pytest.mark.parametrize("dataset", sorted(BUILDERS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file_choice=st.integers(0, 10), changes=edits)
def test_any_index_file_content_gives_a_manifest_or_a_data_error(trees, tmp_path, dataset, file_choice, changes):
    work = tmp_path / f"case-{abs(hash((file_choice, repr(changes)))) % 10**12}"
    shutil.copytree(trees / dataset, work / "raw")
    files = INDEX_FILES[dataset]
    mutate(work / "raw" / files[file_choice % len(files)], changes)
    out = work / "out"
    try:
        prepare(dataset, work / "raw", out, progress=False, workers=1)
    except DataError as err:
        message = str(err)
        assert "\n" not in message and len(message) < 2000
        assert not (out / "manifest.parquet").exists()
    else:
        manifest = pd.read_parquet(out / "manifest.parquet")
        assert manifest["image_id"].is_unique
        assert set(manifest["split"]) == {"train", "test"}
        assert manifest["label"].between(0, manifest["label"].max()).all()
        for path in manifest["path"]:
            assert ".." not in Path(path).parts and (out / path).is_file()
    finally:
        shutil.rmtree(work, ignore_errors=True)
