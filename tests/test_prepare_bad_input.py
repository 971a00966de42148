"""Every bad input gives one clear line naming the culprit, and no manifest."""

import tarfile

import pytest
from click.testing import CliRunner
from PIL import Image

from fgkd.cli import main
from fgkd.data.prepare import prepare
from fgkd.errors import DataError
from fixtures import add_cub_image, archive, correlation, decoded, make_aircraft, make_cub, write_image

pytestmark = pytest.mark.unit


def cub_root(raw):
    return raw / "CUB_200_2011"


def first_image(raw):
    return sorted((cub_root(raw) / "images").rglob("*.jpg"))[0]


def remove_image(raw):
    path = first_image(raw)
    path.unlink()
    return path.name


def corrupt_image(raw):
    path = first_image(raw)
    path.write_bytes(b"this is not a jpeg" * 10)
    return path.name


def truncate_image(raw):
    path = first_image(raw)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.name


def label_out_of_range(raw):
    labels = cub_root(raw) / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[2] = lines[2].split()[0] + " 99"
    labels.write_text("\n".join(lines) + "\n")
    return "image_class_labels.txt"


def path_escapes_root(raw):
    images = cub_root(raw) / "images.txt"
    lines = images.read_text().splitlines()
    lines[0] = lines[0].split()[0] + " ../../../etc/passwd"
    images.write_text("\n".join(lines) + "\n")
    return "escapes"


def empty_test_split(raw):
    split = cub_root(raw) / "train_test_split.txt"
    split.write_text("".join(f"{line.split()[0]} 1\n" for line in split.read_text().splitlines()))
    return "test split"


def missing_index_file(raw):
    (cub_root(raw) / "train_test_split.txt").unlink()
    return "train_test_split.txt"


def malformed_line(raw):
    images = cub_root(raw) / "images.txt"
    images.write_text(images.read_text() + "seven\n")
    return "images.txt"


def non_utf8_index(raw):
    classes = cub_root(raw) / "classes.txt"
    classes.write_bytes(classes.read_bytes() + b"9 caf\xe9\n")
    return "classes.txt"


def empty_class_list(raw):
    (cub_root(raw) / "classes.txt").write_text("")  # found by the property test on Python 3.12: an IndexError
    return "classes.txt"


def class_without_training_images(raw):
    labels = dict(line.split() for line in (cub_root(raw) / "image_class_labels.txt").read_text().splitlines())
    split = cub_root(raw) / "train_test_split.txt"
    split.write_text("".join(f"{image} {0 if labels[image] == '2' else flag}\n"
                             for image, flag in (line.split() for line in split.read_text().splitlines())))
    return "Bird_B' has no training images"


FAULTS = [remove_image, corrupt_image, truncate_image, label_out_of_range, path_escapes_root, empty_test_split,
          missing_index_file, malformed_line, non_utf8_index, empty_class_list, class_without_training_images]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_bad_input_is_named_and_leaves_no_manifest(tmp_path, fault):
    make_cub(tmp_path / "raw")
    culprit = fault(tmp_path / "raw")
    with pytest.raises(DataError, match=culprit):
        prepare("cub", tmp_path / "raw", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

    result = CliRunner().invoke(main, ["prepare", "cub", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if "Error" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith("Error: ") and culprit in error_lines[0]
    assert result.output.rstrip().endswith(error_lines[0])
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_archive_of_another_data_set_is_refused_by_name(tmp_path):
    make_aircraft(tmp_path / "raw")
    packed = archive(tmp_path / "raw", tmp_path / "fgvc-aircraft-2013b.tar.gz")
    with pytest.raises(DataError, match="does not look like CUB-200-2011.*fgvc-aircraft-2013b"):
        prepare("cub", packed, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_damaged_archive_is_refused(tmp_path):
    make_cub(tmp_path / "raw")
    packed = archive(tmp_path / "raw", tmp_path / "CUB_200_2011.tgz")
    packed.write_bytes(packed.read_bytes()[:300])
    with pytest.raises(DataError, match="CUB_200_2011.tgz"):
        prepare("cub", packed, tmp_path / "out", progress=False)


def test_archive_member_escaping_the_folder_is_refused(tmp_path):
    evil = tmp_path / "evil.tgz"
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../outside.txt")
    with pytest.raises(DataError, match="evil.tgz"):
        prepare("cub", evil, tmp_path / "sub" / "out", progress=False)
    assert not list(tmp_path.rglob("outside.txt"))  # it would land beside the unpacking folder, in sub/
    assert not (tmp_path / "sub" / "out").exists()


def test_existing_unrelated_folder_is_not_overwritten(tmp_path):
    make_cub(tmp_path / "raw")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a prepared data set"):
        prepare("cub", tmp_path / "raw", tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_interrupted_prepare_resumes_and_keeps_converted_images(tmp_path):
    make_cub(tmp_path / "raw", classes=3, per_class=4)
    last = sorted((cub_root(tmp_path / "raw") / "images").rglob("*.jpg"))[-1]
    good = last.read_bytes()
    last.write_bytes(b"broken")
    with pytest.raises(DataError, match=last.name):
        prepare("cub", tmp_path / "raw", tmp_path / "out", progress=False, workers=1)
    staged = sorted((tmp_path / ".out.partial").rglob("*.jpg"))
    assert len(staged) == 11  # every image before the broken one was kept
    mtimes = {p: p.stat().st_mtime_ns for p in staged}
    last.write_bytes(good)
    prepare("cub", tmp_path / "raw", tmp_path / "out", progress=False, workers=1)
    assert (tmp_path / "out" / "manifest.parquet").exists() and not (tmp_path / ".out.partial").exists()
    for path, mtime in mtimes.items():
        assert (tmp_path / "out" / path.relative_to(tmp_path / ".out.partial")).stat().st_mtime_ns == mtime


def cli_prepare(dataset, raw, out, *extra):
    return CliRunner().invoke(main, ["prepare", dataset, "--root", str(raw), "--out", str(out), *extra])


def assert_one_line_error(result, *culprits):
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an exception click caught for us
    error = [line for line in result.output.splitlines() if "Error" in line]
    assert len(error) == 1 and error[0].startswith("Error: ") and result.output.rstrip().endswith(error[0])
    assert all(culprit in error[0] for culprit in culprits), error[0]


def test_user_files_in_a_prepared_folder_are_never_deleted(tmp_path):
    make_cub(tmp_path / "raw")
    prepare("cub", tmp_path / "raw", tmp_path / "out", resize=24, progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    (tmp_path / "out" / "notes.txt").write_text("mine")
    (tmp_path / "out" / "images" / "001.Bird_A" / "extra.png").write_bytes(b"also mine")
    assert_one_line_error(cli_prepare("cub", tmp_path / "raw", tmp_path / "out", "--resize", "32"),
                          "notes.txt", "images/001.Bird_A/extra.png", "move them")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "out" / "images" / "001.Bird_A" / "extra.png").read_bytes() == b"also mine"
    assert all(path.read_bytes() == data for path, data in before.items())  # the earlier output is untouched
    assert not (tmp_path / ".out.partial").exists()


def test_aircraft_image_no_taller_than_its_banner_is_named(tmp_path):
    make_aircraft(tmp_path / "raw")
    victim = sorted((tmp_path / "raw" / "fgvc-aircraft-2013b" / "data" / "images").glob("*.jpg"))[2]
    write_image(victim, 64, 20, 0)
    assert_one_line_error(cli_prepare("aircraft", tmp_path / "raw", tmp_path / "out"), victim.name, "20 px tall")
    assert not (tmp_path / "out").exists()


def cub_id_beyond_int64(raw):
    for index in ("images.txt", "image_class_labels.txt", "train_test_split.txt"):
        path = cub_root(raw) / index
        path.write_text(path.read_text().replace("12 ", "99999999999999999999 ", 1))
    return "images.txt", "99999999999999999999"


def aircraft_id_beyond_int64(raw):
    data = raw / "fgvc-aircraft-2013b" / "data"
    index = data / "images_variant_test.txt"
    name = sorted(index.read_text().split())[0]
    (data / "images" / f"{name}.jpg").rename(data / "images" / f"1{name:0>20}.jpg")
    index.write_text(index.read_text().replace(name, f"1{name:0>20}"))
    return "images_variant_test.txt", f"1{name:0>20}"


def aircraft_name_of_non_ascii_digits(raw):
    index = raw / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    index.write_text(index.read_text() + "\u00b2 707-320\n")  # '²'.isdigit() but int('²') fails
    return "images_variant_test.txt", "\u00b2"


@pytest.mark.parametrize("fault", [cub_id_beyond_int64, aircraft_id_beyond_int64, aircraft_name_of_non_ascii_digits])
def test_image_id_that_is_no_int64_is_named(tmp_path, fault):
    dataset = "cub" if fault.__name__.startswith("cub") else "aircraft"
    {"cub": make_cub, "aircraft": make_aircraft}[dataset](tmp_path / "raw")
    culprits = fault(tmp_path / "raw")
    assert_one_line_error(cli_prepare(dataset, tmp_path / "raw", tmp_path / "out"), *culprits)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("other", ["{stem}", "{upper}.jpg"])  # x beside x.jpg; X.jpg too (one file on macOS)
def test_names_that_would_share_one_output_file_are_refused(tmp_path, other):
    make_cub(tmp_path / "raw")
    jpg = next((cub_root(tmp_path / "raw") / "images" / "001.Bird_A").glob("*.jpg"))
    name = other.format(stem=jpg.stem, upper=jpg.stem.upper())
    add_cub_image(tmp_path / "raw", f"001.Bird_A/{name}", 255 - decoded(jpg), format="PNG")
    assert_one_line_error(cli_prepare("cub", tmp_path / "raw", tmp_path / "out"), jpg.name, name, "rename one")
    assert not (tmp_path / "out").exists()


def test_output_on_a_read_only_file_system_is_one_line(tmp_path, mount):
    make_cub(tmp_path / "raw")
    read_only = mount("ro,size=1m")
    assert_one_line_error(cli_prepare("cub", tmp_path / "raw", read_only / "out"), "out", "Read-only file system")


def test_output_under_a_file_is_one_line(tmp_path):
    make_cub(tmp_path / "raw")
    (tmp_path / "file").write_text("not a folder")
    assert_one_line_error(cli_prepare("cub", tmp_path / "raw", tmp_path / "file" / "out"), "file/out",
                          "Not a directory")
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "archive"])
def test_resume_reconverts_a_source_changed_since_it_was_staged(tmp_path, packed):
    make_cub(tmp_path / "raw", classes=3, per_class=4)
    sources = sorted((cub_root(tmp_path / "raw") / "images").rglob("*.jpg"))
    good = sources[-1].read_bytes()
    sources[-1].write_bytes(b"broken")
    root = archive(tmp_path / "raw", tmp_path / "CUB_200_2011.tgz") if packed else tmp_path / "raw"
    with pytest.raises(DataError, match=sources[-1].name):
        prepare("cub", root, tmp_path / "out", progress=False, workers=1)
    staged = {p.name: p for p in (tmp_path / ".out.partial").rglob("*.jpg")}
    assert sources[0].name in staged and sources[1].name in staged
    unchanged_mtime = staged[sources[1].name].stat().st_mtime_ns
    sources[-1].write_bytes(good)
    changed = 255 - decoded(sources[0])  # same name and size in pixels, the negative content
    Image.fromarray(changed).save(sources[0], format="JPEG", quality=95)
    if packed:
        archive(tmp_path / "raw", root)
    prepare("cub", root, tmp_path / "out", progress=False, workers=1)
    copies = {p.name: p for p in (tmp_path / "out").rglob("*.jpg")}
    assert correlation(copies[sources[0].name], changed) > 0.9
    if not packed:  # a folder's unchanged images are reused; a changed archive is converted again as a whole
        assert copies[sources[1].name].stat().st_mtime_ns == unchanged_mtime


def test_temporary_file_of_a_killed_worker_does_not_reach_the_output(tmp_path):
    make_cub(tmp_path / "raw")
    last = sorted((cub_root(tmp_path / "raw") / "images").rglob("*.jpg"))[-1]
    good = last.read_bytes()
    last.write_bytes(b"broken")
    with pytest.raises(DataError, match=last.name):
        prepare("cub", tmp_path / "raw", tmp_path / "out", progress=False, workers=1)
    half_written = tmp_path / ".out.partial" / "images" / last.parent.name / f".{last.name}.k1ll3d.partial"
    half_written.write_bytes(b"half a JPEG, as a worker killed while saving leaves it")
    last.write_bytes(good)
    prepare("cub", tmp_path / "raw", tmp_path / "out", progress=False, workers=1)
    assert [p.name for p in (tmp_path / "out").rglob(".*")] == []
