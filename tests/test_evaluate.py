"""predict, attention and part-occlusion through the real CLI: bad options and data are one line; the
occlusion ensemble follows --combine; the attention shares are those of the all-visible images."""

import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.special
from click.testing import CliRunner

from fgkd.cli import main
from artifacts import one_line_error, ranked_hits, save_model

CLASSES = 4  # of the tiny_data set


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("model") / "teacher" / "model.pt", CLASSES)[0]


def test_predict_batch_size_zero_is_one_line_naming_the_option(model, tiny_data, tmp_path):
    out = tmp_path / "logits.parquet"
    result = CliRunner().invoke(main, ["predict", "--model", str(model), "--data", str(tiny_data), "--out", str(out),
                                       "--batch-size", "0"])
    one_line_error(result, "'--batch-size'", "0", exit_code=2)
    assert not out.exists()


def test_predict_out_last_writes_the_last_epochs_logits_in_the_same_run(model, tiny_data, tmp_path):
    """The workflow's predict job: --out-last equals a separate `--which last` run, and is not the best epoch's."""
    import torch

    saved = torch.load(model, weights_only=True)
    torch.manual_seed(1)
    saved["last_state_dict"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                                for k, v in saved["state_dict"].items()}
    two_epochs = tmp_path / "teacher" / "model.pt"
    two_epochs.parent.mkdir()
    torch.save(saved, two_epochs)
    common = ["predict", "--model", str(two_epochs), "--data", str(tiny_data)]
    best, last, alone = (tmp_path / f"{name}.parquet" for name in ("best", "last", "alone"))
    assert CliRunner().invoke(main, [*common, "--out", str(best), "--out-last", str(last)]).exit_code == 0
    assert CliRunner().invoke(main, [*common, "--out", str(alone), "--which", "last"]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(last), pd.read_parquet(alone))
    assert not np.allclose(pd.read_parquet(best).filter(like="logit_"), pd.read_parquet(last).filter(like="logit_"))


def test_predict_writes_nothing_when_the_last_epochs_weights_are_broken(model, tiny_data, tmp_path):
    """Both sets of weights are checked first: before, the best epoch's logits were written, then the run failed."""
    import torch

    saved = torch.load(model, weights_only=True)
    saved["last_state_dict"]["trunk.conv1.weight"][0, 0, 0, 0] = float("nan")
    broken = tmp_path / "teacher" / "model.pt"
    broken.parent.mkdir()
    torch.save(saved, broken)
    best, last = tmp_path / "best.parquet", tmp_path / "last.parquet"
    result = CliRunner().invoke(main, ["predict", "--model", str(broken), "--data", str(tiny_data), "--out", str(best),
                                       "--out-last", str(last)])
    one_line_error(result, str(broken), "non-finite weights")
    assert not best.exists() and not last.exists()


@pytest.mark.parametrize("options", [["--which", "last"], ["--out-last", "SAME"]])
def test_predict_out_last_needs_the_best_epoch_and_its_own_file(model, tiny_data, tmp_path, options):
    out = tmp_path / "logits.parquet"
    last = out if "SAME" in options else tmp_path / "last.parquet"
    extra = [str(last) if o == "SAME" else o for o in options] + ([] if "SAME" in options else ["--out-last", str(last)])
    result = CliRunner().invoke(main, ["predict", "--model", str(model), "--data", str(tiny_data), "--out", str(out),
                                       *extra])
    one_line_error(result, "--out-last")
    assert not out.exists() and not last.exists()


def test_predict_on_a_manifest_without_test_images_is_one_line_and_no_output(model, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest = pd.read_parquet(data / "manifest.parquet")
    manifest.assign(split="train").to_parquet(data / "manifest.parquet")
    out = tmp_path / "logits.parquet"
    result = CliRunner().invoke(main, ["predict", "--model", str(model), "--data", str(data), "--out", str(out)])
    one_line_error(result, str(data), "no test images")
    assert not out.exists()


def test_part_occlusion_on_a_manifest_without_test_images_is_one_line_and_no_output(model, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest = pd.read_parquet(data / "manifest.parquet")
    manifest.assign(split="train").to_parquet(data / "manifest.parquet")
    out, attention = tmp_path / "occlusion.parquet", tmp_path / "attention.parquet"
    result = CliRunner().invoke(main, ["part-occlusion", "--raw", str(tiny_data.parent / "raw"), "--data", str(data),
                                       "--model", str(model), "--out", str(out), "--attention-out", str(attention)])
    one_line_error(result, str(data), "no test images")
    assert not out.exists() and not attention.exists()


def test_part_occlusion_writes_the_attention_shares_on_the_all_visible_images(model, tiny_data, tmp_path):
    """Both tables from one run; the shares are those of the network's own maps of the test images with every part
    visible (not of the images as generated, whose shares differ), with elsewhere summing to 1."""
    import torch

    from fgkd.data.dataset import fgvc_transform
    from fgkd.losses import attention_energy
    from fgkd.modelfile import input_sizes, load_model
    from fgkd.occlusion import ALL_VISIBLE, PARTS, conditions, part_attention, rerender

    out, attention = tmp_path / "occlusion.parquet", tmp_path / "attention.parquet"
    result = CliRunner().invoke(main, ["part-occlusion", "--raw", str(tiny_data.parent / "raw"), "--data",
                                       str(tiny_data), "--model", str(model), "--out", str(out),
                                       "--attention-out", str(attention)])
    assert result.exit_code == 0, result.output
    assert set(pd.read_parquet(out)["condition"]) == {name for name, _ in conditions()}
    table = pd.read_parquet(attention)
    assert table.columns.tolist() == ["network", "part", "share", "area"]
    assert table["network"].tolist() == ["teacher"] * len(PARTS) and table["part"].tolist() == list(PARTS)
    assert table["share"].between(0, 1).all() and table["share"].sum() == pytest.approx(1)
    assert table["area"].between(0, 1).all() and table["area"].sum() == pytest.approx(1)

    network, meta = load_model(model)
    sizes = input_sizes(meta)
    test = pd.read_parquet(tiny_data / "manifest.parquet").query("split == 'test'")
    ids, labels = test["image_id"].tolist(), test["label"].tolist()
    shares = {}
    for condition, pattern in conditions()[:2]:
        images = torch.stack([fgvc_transform(sizes, train=False)(i) for i in rerender(tiny_data.parent / "raw", ids,
                                                                                      labels, pattern)])
        with torch.inference_mode():
            network(images)
        energy = {"teacher": attention_energy(network.attention_features)}
        shares[condition] = part_attention(tiny_data.parent / "raw", ids, labels, energy, sizes)
    pd.testing.assert_frame_equal(table, shares[ALL_VISIBLE])
    assert not np.allclose(shares["as generated"]["share"], shares[ALL_VISIBLE]["share"])


def test_part_occlusion_with_both_tables_in_one_file_is_one_line_and_no_output(model, tiny_data, tmp_path):
    out = tmp_path / "tables.parquet"
    result = CliRunner().invoke(main, ["part-occlusion", "--raw", str(tiny_data.parent / "raw"), "--data",
                                       str(tiny_data), "--model", str(model), "--out", str(out),
                                       "--attention-out", str(tmp_path / "." / "tables.parquet")])
    one_line_error(result, "--attention-out", "--out")
    assert not out.exists()


def test_attention_with_no_images_is_one_line_naming_the_option(model, tiny_data, tmp_path):
    result = CliRunner().invoke(main, ["attention", "--model", str(model), "--model", str(model), "--images", "0",
                                       "--data", str(tiny_data), "--overlap", str(tmp_path / "a.parquet"),
                                       "--figure", str(tmp_path / "a.png")])
    one_line_error(result, "'--images'", "0", exit_code=2)
    assert not (tmp_path / "a.parquet").exists()


def test_attention_in_batches_gives_the_overlap_and_figure_of_one_batch(model, tiny_teacher, tiny_data, tmp_path):
    """Memory grows with --batch-size, not with the image count: the networks see batches of at most that size
    (watched by a forward hook on every module), which add up to the one-batch answer (a trained and an untrained
    network, so that the overlap is not 1 whatever the maps)."""
    import torch
    from PIL import Image

    from fgkd.models import FGVCNet

    drawn, batches = {}, {}
    for batch in ("1000", "3"):
        out, seen = tmp_path / batch, []
        watch = torch.nn.modules.module.register_module_forward_hook(
            lambda module, inputs, output: seen.append(len(inputs[0])) if isinstance(module, FGVCNet) else None)
        try:
            result = CliRunner().invoke(main, ["attention", "--model", str(tiny_teacher), "--model", str(model),
                                               "--data", str(tiny_data), "--images", "4", "--batch-size", batch,
                                               "--overlap", str(out / "a.parquet"), "--figure", str(out / "a.png")])
        finally:
            watch.remove()
        assert result.exit_code == 0, result.output
        with Image.open(out / "a.png") as figure:
            drawn[batch] = (pd.read_parquet(out / "a.parquet")["overlap"].item(), np.asarray(figure, dtype=float))
        batches[batch] = seen
    test_images = (pd.read_parquet(tiny_data / "manifest.parquet")["split"] == "test").sum()
    assert batches["1000"] == [test_images] * 2 and max(batches["3"]) == 3 and sum(batches["3"]) == 2 * test_images
    (whole, whole_figure), (batched, batched_figure) = drawn["1000"], drawn["3"]
    assert 0 < whole < 0.99 and batched == pytest.approx(whole, abs=1e-6)
    assert np.abs(whole_figure - batched_figure).max() <= 2


def test_occlusion_ensemble_follows_combine_like_an_independent_recomputation(tiny_data, tmp_path):
    """Two networks of constant logits: summed, class 0 wins; their softmax mean, class 1. The test split
    keeps one image of class 0 and three of class 1, so the two rules score differently."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest = pd.read_parquet(data / "manifest.parquet")
    test = manifest[manifest.split == "test"]
    kept = [*test[test.label == 0].index[:1], *test[test.label == 1].index[:3]]
    manifest.drop(index=test.index.difference(kept)).to_parquet(data / "manifest.parquet")
    models = [save_model(tmp_path / "teacher" / "model.pt", CLASSES, bias=[3, 0, 0, 0])[0],
              save_model(tmp_path / "student_1" / "model.pt", CLASSES, bias=[0, 2.5, -100, -100])[0]]
    logits = []
    for path in models:
        out = path.parent / "logits.parquet"
        result = CliRunner().invoke(main, ["predict", "--model", str(path), "--data", str(data), "--out", str(out)])
        assert result.exit_code == 0, result.output
        logits.append(pd.read_parquet(out))
    labels = logits[0]["label"].to_numpy()
    scores = [frame.filter(like="logit_").to_numpy(np.float64) for frame in logits]
    expected = {"logits": ranked_hits(sum(scores), labels, 1).mean(),
                "probs": ranked_hits(sum(scipy.special.softmax(s, axis=1) for s in scores) / 2, labels, 1).mean()}
    assert expected["logits"] != expected["probs"]
    for combine in ("logits", "probs"):
        out = tmp_path / f"occlusion_{combine}.parquet"
        result = CliRunner().invoke(main, ["part-occlusion", "--raw", str(tiny_data.parent / "raw"),
                                           "--data", str(data), *[f"--model={m}" for m in models],
                                           "--combine", combine, "--out", str(out)])
        assert result.exit_code == 0, result.output
        table = pd.read_parquet(out)
        rows = table[(table.network == "ensemble") & (table.condition == "as generated")]
        assert rows["top1"].tolist() == [expected[combine]] and rows["combine"].tolist() == [combine]
        teacher = table[(table.network == "teacher") & (table.condition == "as generated")]["top1"]
        assert teacher.tolist() == [ranked_hits(scores[0], labels, 1).mean()]


@pytest.fixture(scope="module")
def identity_data(tmp_path_factory):
    """A prepared synthetic set in identity-parts mode (4 classes = 2 x 2 combinations over head and wing)."""
    from fgkd.data.prepare import prepare
    from fgkd.data.synth import generate

    base = tmp_path_factory.mktemp("identity")
    generate(base / "raw", classes=4, images_per_class=8, size=32, seed=1, identity_parts=2)
    prepare("cub", base / "raw", base / "prepared", progress=False)
    return base


def test_part_occlusion_rerenders_an_identity_parts_set_exactly(identity_data, tmp_path):
    """The re-rendered test images equal the prepared ones pixel for pixel (codes and per-image markings of the
    free slots reconstructed from synthetic.json), and `fgkd part-occlusion` scores every condition on them."""
    from PIL import Image

    from fgkd.occlusion import conditions, rerender

    manifest = pd.read_parquet(identity_data / "prepared" / "manifest.parquet")
    test = manifest[manifest.split == "test"]
    images = rerender(identity_data / "raw", test["image_id"], test["label"], None)
    for path, image in zip(test["path"], images):
        with Image.open(identity_data / "prepared" / path) as prepared:
            assert np.array_equal(np.asarray(prepared.convert("RGB")), image.permute(1, 2, 0).numpy()), path

    model = save_model(tmp_path / "teacher" / "model.pt", CLASSES)[0]
    logits = tmp_path / "logits.parquet"
    result = CliRunner().invoke(main, ["predict", "--model", str(model), "--data", str(identity_data / "prepared"),
                                       "--out", str(logits)])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(logits)
    out = tmp_path / "occlusion.parquet"
    result = CliRunner().invoke(main, ["part-occlusion", "--raw", str(identity_data / "raw"), "--data",
                                       str(identity_data / "prepared"), "--model", str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert table["condition"].drop_duplicates().tolist() == [name for name, _ in conditions()]
    teacher = table[(table.network == "teacher") & (table.condition == "as generated")]["top1"]
    expected = ranked_hits(frame.filter(like="logit_").to_numpy(), frame["label"].to_numpy(), 1).mean()
    assert teacher.tolist() == [expected]
