"""Backbones from timm (`timm-<name>`): each family's attention map is the one its docs define, every stage trains,
the model file, `classify` and `export` work, and local weight files load (position embeddings resized) or are
refused in one line. Tiny random-initialised models at 32-64 px: nothing downloads."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from fgkd.cli import main
from fgkd.ensemble import ensemble, predict
from fgkd.errors import FgkdError
from fgkd.modelfile import load_model
from fgkd.models import FGVCNet
from fgkd.train import train
from artifacts import one_line_error
from conftest import FAMILIES, TINY
from fixtures import write_image


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def net(backbone, stride, size=64, **kwargs):
    torch.manual_seed(0)
    return FGVCNet(backbone, 5, "official", 16, stride, image_size=size, **kwargs).eval()


@pytest.mark.unit
@pytest.mark.parametrize("backbone, stride", [("timm-test_vit", 16), ("timm-swin_tiny_patch4_window7_224", 32)])
def test_a_transformers_map_is_timms_own_grid_of_its_normed_patch_tokens(backbone, stride):
    """ViT: the patch tokens after the final norm, class token dropped, at their place on the grid; Swin: the last
    stage after its norm. timm's forward_intermediates (NCHW, normed) is the reference."""
    model = net(backbone, stride)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(images)
        timm_model = model.trunk.model
        last = len(timm_model.feature_info) - 1
        (reference,) = timm_model.forward_intermediates(images, indices=[last], norm=True, output_fmt="NCHW",
                                                         intermediates_only=True)
    assert model.attention_features.shape == reference.shape
    torch.testing.assert_close(model.attention_features, reference)
    if backbone == "timm-test_vit":
        assert reference.shape[-2:] == (4, 4) and timm_model.num_prefix_tokens == 1  # 64 / 16; the class token out
        tokens = timm_model.forward_features(images)
        torch.testing.assert_close(model.attention_features[1, :, 2, 3], tokens[1, 1 + 2 * 4 + 3])  # row 2, column 3


@pytest.mark.unit
@pytest.mark.parametrize("family", FAMILIES)
def test_every_offered_stride_gives_a_map_the_cheap_path_agrees_with_and_gradients_reach_the_trunk(family):
    backbone, _ = FAMILIES[family]
    trunk = net(backbone, 16).trunk
    offered = sorted({info["reduction"] for info in trunk.model.feature_info if info["reduction"] >= 4})
    assert offered == ([16] if family == "vit" else [4, 8, 16, 32])
    images = torch.randn(2, 3, 64, 64)
    for stride in offered:
        model = net(backbone, stride).train()
        logits = model(images)
        attention = model.attention_features
        assert attention.shape[0] == 2 and attention.shape[-2:] == (64 // stride, 64 // stride), (family, stride)
        assert logits.shape == (2, 5)
        with torch.no_grad():
            model.eval()(images)
            torch.testing.assert_close(model.attention_only(images), model.attention_features)
        model.zero_grad()
        model.train()(images)
        model.attention_features.pow(2).sum().backward()
        first = next(p for p in model.trunk.parameters() if p.requires_grad)
        assert first.grad is not None and first.grad.abs().sum() > 0, (family, stride)
        assert all(p.grad is None for p in model.head.parameters())  # the map is taken before the heads


@pytest.mark.unit
@pytest.mark.parametrize("stride", [4, 8, 32])
def test_a_stride_the_family_does_not_have_is_one_line(stride):
    with pytest.raises(FgkdError, match=rf"attention_stride {stride} is not available for timm-test_vit; choose one of "
                                        r"\[16\]"):
        net("timm-test_vit", stride)


@pytest.mark.unit
@pytest.mark.parametrize("backbone, stride, crop, channels, grid", [
    ("timm-vit_base_patch16_224", 16, 448, 768, 28),  # config/paper-vit.yaml's network: position embeddings of 28 x 28
    ("timm-resnet50", 32, 448, 2048, 14), ("timm-resnet50", 8, 448, 512, 56),
    ("timm-swin_base_patch4_window7_224", 32, 448, 1024, 14), ("timm-convnext_tiny", 16, 224, 384, 14),
    ("timm-efficientnet_b0", 32, 224, 1280, 7)])
def test_the_full_size_models_give_the_maps_the_docs_state(backbone, stride, crop, channels, grid):
    """Built and run on the meta device (shapes only, no memory): the attention map's channels and grid."""
    with torch.device("meta"):
        model = FGVCNet(backbone, 200, "official", 512, stride, image_size=crop)
        _, attention = model.trunk(torch.empty(2, 3, crop, crop))
    assert attention.shape == (2, channels, grid, grid)
    if backbone.startswith("timm-vit"):
        assert model.trunk.model.pos_embed.shape == (1, 1 + grid * grid, 768)


@pytest.mark.unit
def test_a_hybrid_vit_lays_its_tokens_on_the_grid_of_its_stem_and_patches():
    """A CNN stem before the patches (stride 2 x 2 x 2 x 2 here, then 8 px patches): 32 px per token, 2 x 2 at 64."""
    model = net("timm-vit_tiny_r_s16_p8_224", 32)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
        (reference,) = model.trunk.model.forward_intermediates(torch.zeros(1, 3, 64, 64), indices=1, norm=True,
                                                               intermediates_only=True)
    assert model.attention_features.shape[-2:] == reference.shape[-2:] == (2, 2)


@pytest.mark.unit
@pytest.mark.parametrize("crop", [40, 16])
def test_a_crop_that_does_not_cut_into_whole_patches_is_one_line(crop):
    with pytest.raises(FgkdError, match=f"crop {crop} does not cut into timm-test_vit's patches of 16 px; give a "
                                        "multiple of 16 of at least 32"):
        net("timm-test_vit", 16, size=crop)


@pytest.mark.unit
@pytest.mark.parametrize("backbone, culprit, status", [
    ("timm/test_vit", "write timm-test_vit", 2), ("resnet5", "or timm-NAME for a model of timm", 2),
    ("timm-no_such_model", "timm has no model 'no_such_model'", 1),
    ("timm-test_byobnet", "is a timm ByobNet; fgkd knows where these families attend", 1),
    ("timm-test_vit.r160_in1k", "give the architecture without a .tag of its weights (timm-test_vit)", 1),
    ("timm-deit_tiny_distilled_patch16_224", "is a timm VisionTransformerDistilled", 1)])
def test_a_backbone_fgkd_cannot_build_is_one_line(tiny_data, tmp_path, backbone, culprit, status):
    result = run("train", "--stage", "teacher", "--data", tiny_data, "--out", tmp_path / "out", "--backbone", backbone,
                 "--epochs", 1, "--crop", 32, "--resize", 36, "--attention-stride", 16)
    one_line_error(result, culprit, exit_code=status)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_run(request, tiny_data, tmp_path_factory):
    """Teacher, an OR student, an AT student and the aux-KD student of one family, one epoch each, on tiny_data."""
    backbone, stride = FAMILIES[request.param]
    config = dataclasses.replace(TINY, backbone=backbone, attention_stride=stride, epochs=1)
    out = tmp_path_factory.mktemp(request.param)
    teacher = train("teacher", tiny_data, out / "teacher", config, progress=False)
    s1 = train("student", tiny_data, out / "student_1", config, [teacher], index=1, progress=False)
    at = dataclasses.replace(config, orth="at", orth_weight=1.0)
    s2 = train("student", tiny_data, out / "student_2", at, [teacher, s1], index=2, progress=False)
    aux = train("auxkd", tiny_data, out / "auxkd", config, [teacher, s1, s2], progress=False)
    return request.param, [teacher, s1, s2], aux


def test_every_stage_of_every_family_trains_and_its_model_file_gives_back_the_network(family_run, tiny_data):
    family, members, aux = family_run
    for path in [*members, aux]:
        history = pd.read_parquet(path.parent / "history.parquet")
        assert np.isfinite(history["loss"]).all(), (family, path)
    orth = pd.read_parquet(members[1].parent / "history.parquet")["orth_raw"]
    assert (orth > 0).all(), family  # the OR penalty saw the teacher's map
    assert {"kd", "aux_ce"} <= set(pd.read_parquet(aux.parent / "history.parquet").columns)
    model, meta = load_model(aux)
    assert meta["backbone"] == FAMILIES[family][0] and meta["aux_heads"] == 3
    logits = [predict(m, tiny_data, m.parent / "logits.parquet") for m in members]
    table = ensemble(logits, ["teacher", "student_1", "student_2"])
    assert np.isfinite(table["top1"]).all()
    # The loader (built on the meta device, then given the file's tensors) gives the network a plain build does;
    # Swin's relative-position index is a buffer its constructor computes, not in the file.
    network, meta = load_model(members[1])
    plain = FGVCNet(meta["backbone"], meta["num_classes"], meta["head"], meta["head_hidden"], meta["attention_stride"],
                    image_size=meta["crop"])
    plain.load_state_dict(torch.load(members[1], weights_only=True)["state_dict"])
    images = torch.randn(3, 3, meta["crop"], meta["crop"])
    with torch.no_grad():
        torch.testing.assert_close(network(images), plain.eval()(images))
    overlap, figure = members[0].parent.parent / "overlap.parquet", members[0].parent.parent / "attention.png"
    result = run("attention", *[a for m in members for a in ("--model", m)], "--data", tiny_data, "--images", 2,
                 "--overlap", overlap, "--figure", figure)
    assert result.exit_code == 0, result.output
    assert figure.stat().st_size > 0 and np.isfinite(pd.read_parquet(overlap).select_dtypes("number")).all().all()


@pytest.mark.parametrize("export_format", ["onnx", "torchscript"])
def test_every_familys_student_exports_and_classifies(family_run, tiny_data, tmp_path, export_format):
    """The exported student gives predict's logits (export checks its own file; this reads it back), and `classify`
    draws its attention on a photo."""
    _, members, _ = family_run
    from test_export import card_inputs, predicted, run_exported

    out = tmp_path / f"student.{export_format}"
    result = run("export", "--model", members[1], "--format", export_format, "--out", out)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / f"student.{export_format}.json").read_text())
    files, expected, _ = predicted(members[1], tiny_data, tmp_path / "logits.parquet")
    logits = run_exported(out, export_format, card_inputs(card, files), card)
    assert np.abs(logits - expected).max() <= 1e-4
    images = tmp_path / "images"
    write_image(images / "wide.jpg", 72, 40, seed=1)
    result = run("classify", "--model", members[1], images, "--overlay", tmp_path / "overlay")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "overlay" / "wide.jpg.png").is_file()


@pytest.mark.parametrize("family_run", ["vit"], indirect=True)  # the position tables of a ViT are sized for its crop
def test_init_from_a_vit_of_another_crop_is_one_line(family_run, tiny_data, tmp_path):
    """Its position embeddings are of another grid: refused, naming the crop to train at."""
    _, members, _ = family_run
    result = run("train", "--stage", "teacher", "--data", tiny_data, "--out", tmp_path / "out", "--backbone",
                 "timm-test_vit", "--attention-stride", 16, "--crop", 64, "--resize", 64, "--epochs", 1,
                 "--init-from", members[0])
    one_line_error(result, f"init_from: {members[0]} was trained at crop 32, this stage at 64", "model.pos_embed",
                   "train this stage at crop 32")


# ----- local weights files


def timm_file(tmp_path, name, suffix=".safetensors", **kwargs):
    """timm's own model as its weights file (with its classifier, at its own input size)."""
    torch.manual_seed(1)
    state = timm.create_model(name, pretrained=False, **kwargs).state_dict()
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path, state


@pytest.mark.unit
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_vit_file_of_another_input_size_loads_with_its_position_embeddings_resized(tmp_path, suffix):
    """test_vit's file is of 160 px (a 10 x 10 grid); the network takes 64 px (4 x 4): timm's resampling, as its own
    pretrained loading does it, and every other tensor as it is."""
    from timm.layers import resample_abs_pos_embed

    path, state = timm_file(tmp_path, "test_vit", suffix)
    model = FGVCNet("timm-test_vit", 5, "gap", 16, 16, pretrained=str(path), image_size=64)
    loaded = model.trunk.model.state_dict()
    expected = resample_abs_pos_embed(state["pos_embed"], (4, 4), num_prefix_tokens=1, antialias=True)
    assert state["pos_embed"].shape[1] == 1 + 100 and loaded["pos_embed"].shape[1] == 1 + 16
    torch.testing.assert_close(loaded["pos_embed"], expected)
    for key, value in loaded.items():
        if key != "pos_embed":
            torch.testing.assert_close(value, state[key], msg=key)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["test_vit2", "test_vit3"])
def test_an_average_or_attention_pooled_vit_takes_timms_own_weights(tmp_path, name):
    """test_vit2 norms after pooling (fc_norm, applied here per patch token); test_vit3 pools by attention (its pool
    belongs to the classifier fgkd replaces, so its keys are left out like the classifier's)."""
    path, state = timm_file(tmp_path, name, img_size=64)
    model = FGVCNet(f"timm-{name}", 5, "gap", 16, 16, pretrained=str(path), image_size=64)
    loaded = model.trunk.model.state_dict()
    assert not any(k.startswith("attn_pool.") for k in loaded)
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], msg=key)
    if name == "test_vit2":
        tokens = model.trunk.model.forward_intermediates(torch.zeros(1, 3, 64, 64), indices=1, norm=True,
                                                         intermediates_only=True)[0]
        normed = model.trunk.model.fc_norm(tokens.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        model.eval()(torch.zeros(1, 3, 64, 64))
        torch.testing.assert_close(model.attention_features, normed)


@pytest.mark.unit
def test_a_vit_file_of_another_patch_size_is_refused_not_resampled(tmp_path):
    path, _ = timm_file(tmp_path, "test_vit", patch_size=8, img_size=64)
    with pytest.raises(FgkdError, match=r"does not fit timm-test_vit \(wrong shape: patch_embed.proj.weight "
                                        r"\(64, 3, 8, 8\) \(expected \(64, 3, 16, 16\)\)\)"):
        FGVCNet("timm-test_vit", 5, "gap", 16, 16, pretrained=str(path), image_size=64)


@pytest.mark.unit
@pytest.mark.parametrize("backbone, name", [("timm-test_convnext", "test_convnext"),
                                            ("timm-swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224")])
def test_a_cnn_or_swin_file_becomes_the_trunk(tmp_path, backbone, name):
    path, state = timm_file(tmp_path, name)
    model = FGVCNet(backbone, 5, "gap", 16, 16, pretrained=str(path), image_size=224)
    for key, value in model.trunk.model.state_dict().items():
        if "relative_position_index" not in key and "attn_mask" not in key:  # buffers timm rebuilds per size
            torch.testing.assert_close(value, state[key], msg=key)


@pytest.mark.unit
@pytest.mark.parametrize("damage, culprits", [
    ("other model", ["does not fit timm-test_vit", "missing:", "unexpected:"]),
    ("nan", ["NaN or infinite values", "blocks.0.attn.qkv.weight"]),
    ("not safetensors", ["not a readable safetensors file"]),
    ("not torch", ["torch.load(weights_only=True) cannot read it"]),
])
def test_a_weights_file_that_does_not_fit_the_timm_model_is_one_line(tiny_data, tmp_path, damage, culprits):
    if damage == "other model":
        path, _ = timm_file(tmp_path, "test_convnext")
    elif damage == "nan":
        path, state = timm_file(tmp_path, "test_vit")
        state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
        save_file(state, path)
    else:
        path = tmp_path / ("x.safetensors" if damage == "not safetensors" else "x.pth")
        path.write_bytes(b"\x00garbage" * 10)
    result = run("train", "--stage", "teacher", "--data", tiny_data, "--out", tmp_path / "out", "--backbone",
                 "timm-test_vit", "--pretrained", path, "--epochs", 1, "--crop", 32, "--resize", 36,
                 "--attention-stride", 16)
    one_line_error(result, str(path), *culprits)


@pytest.mark.unit
def test_imagenet_weights_that_are_not_cached_are_one_line_and_nothing_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FgkdError, match="not in the Hugging Face cache.*timm.create_model\\('test_vit', "
                                        "pretrained=True\\)"):
        FGVCNet("timm-test_vit", 5, "gap", 16, 16, pretrained="imagenet", image_size=64)
    assert not any((tmp_path / "hf").rglob("*.safetensors"))


# ----- the paths a GPU run takes (bf16, channels_last, torch.compile, data-parallel), run on CPU


@pytest.mark.unit
@pytest.mark.parametrize("device", ["cpu", "cuda"])  # converting the layers needs no GPU
def test_synchronised_batch_norm_keeps_the_activation_of_timms_fused_norm_layers(device):
    """EfficientNet's BatchNormAct2d is a batch norm with an activation inside: made synchronous, it must compute
    what it did (torch's conversion keeps the norm and drops the activation)."""
    from fgkd.distributed import sync_batchnorm

    model = net("timm-test_efficientnet", 8, size=32)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
        synced = sync_batchnorm(model, torch.device(device)).eval()
        kinds = {type(m).__name__ for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        synced_kinds = {"SyncBatchNormAct", "SyncBatchNorm"} if device == "cuda" else {"ProcessSyncBatchNormAct",
                                                                                      "ProcessSyncBatchNorm"}
        assert kinds == synced_kinds  # the trunk's fused layers and the official head's plain one
        torch.testing.assert_close(synced(images), expected)


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: what a convolution gives under autocast
def test_a_synchronised_batch_norm_trains_as_the_layer_it_replaced(tmp_path, dtype):
    """In one process of a gloo group the CPU layer computes what the original does in training: the output, the
    running statistics its momentum moves, with or without affine weights and running statistics. From bf16 input
    torch's layer keeps float32 statistics and returns bf16: so must the synchronised one."""
    import copy

    import torch.distributed as dist
    from timm.layers import BatchNormAct2d

    from fgkd.distributed import sync_batchnorm

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d
    layers = torch.nn.Sequential(BatchNormAct2d(4), bn(4, momentum=None), bn(4, affine=False),
                                 bn(4, track_running_stats=False), bn(4, eps=0.5, momentum=0.3),
                                 BatchNormAct2d(4, track_running_stats=False))
    for layer in layers:
        if layer.affine:
            torch.nn.init.uniform_(layer.weight, 0.5, 2.0)
            torch.nn.init.uniform_(layer.bias, -1.0, 1.0)
    batches = [(torch.randn(6, 4, 5, 5) * scale + 1).to(dtype) for scale in (3, 1)]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        synced = sync_batchnorm(copy.deepcopy(layers), torch.device("cpu")).train()
        # momentum None: a cumulative average, which two batches of other statistics tell from any other weighting
        for images in batches:
            expected, got = layers.train()(images), synced(images)
    finally:
        dist.destroy_process_group()
    assert got.dtype == expected.dtype == dtype
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(synced.state_dict(), layers.state_dict())  # float32 buffers at float32's tolerance
    for ours, theirs in zip(synced, layers):
        assert (ours.eps, ours.momentum, ours.affine, ours.track_running_stats) == (
            theirs.eps, theirs.momentum, theirs.affine, theirs.track_running_stats)


@pytest.mark.unit
def test_a_batch_norm_fgkd_cannot_make_synchronous_is_one_line():
    """A batch-norm subclass of unknown forward would lose what it adds: refused, naming the layer and the way out."""
    from fgkd.distributed import sync_batchnorm

    class Shifted(torch.nn.BatchNorm2d):
        def forward(self, input):
            return super().forward(input) + 1

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), Shifted(4))
    with pytest.raises(FgkdError, match=r"^sync_batchnorm: the network's layer 1 is a Shifted, which fgkd cannot make "
                                        r"synchronous; set train.sync_batchnorm: false$"):
        sync_batchnorm(model, torch.device("cpu"))


def test_a_vit_trains_on_the_official_recipe_and_its_model_file_carries_it(tiny_data, tmp_path):
    """Square resize, RandomCrop with padding 8, mean = std = 0.5 (config/paper-vit.yaml's recipe): predict feeds the
    network the recipe's test images, read from the model file alone."""
    from fgkd.data.dataset import load_split
    from fgkd.data.recipes import ImageSizes

    backbone, stride = FAMILIES["vit"]
    config = dataclasses.replace(TINY, backbone=backbone, attention_stride=stride, epochs=1, preprocessing="official")
    teacher = train("teacher", tiny_data, tmp_path / "teacher", config, progress=False)
    model, meta = load_model(teacher)
    assert meta["preprocessing"] == "official"
    test_set = load_split(tiny_data, "test", ImageSizes(36, 32, "official"))
    with torch.no_grad():
        expected = model(torch.stack([test_set[i][0] for i in range(len(test_set))]))
    logits = pd.read_parquet(predict(teacher, tiny_data, tmp_path / "logits.parquet")).filter(like="logit_")
    np.testing.assert_allclose(logits.to_numpy(), expected.numpy(), atol=1e-5)
