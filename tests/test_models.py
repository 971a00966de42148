"""The backbone registry, heads and the attention hook."""

import pytest
import torch

from fgkd.errors import FgkdError
from fgkd.methods import FrozenNetworks, OrthogonalStudent
from fgkd.models import BACKBONES, FGVCNet

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_gives_logits_and_attention_features_at_each_stride(backbone):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    for stride in (4, 8, 16, 32):
        model = FGVCNet(backbone, num_classes=5, attention_stride=stride).eval()
        with torch.no_grad():
            logits = model(images)
            features = model.attention_features
            alone = model.attention_only(images)  # the frozen networks' shortcut: the trunk up to that layer
        assert logits.shape == (2, 5)
        assert features.shape[-2:] == (64 // stride, 64 // stride)
        assert torch.equal(alone, features)
        if stride == 16:  # the other strides only move the hook
            break


def test_gap_head_and_aux_heads():
    model = FGVCNet("resnet10", 7, head="gap", aux_heads=3).eval()
    with torch.no_grad():
        main, aux = model(torch.randn(2, 3, 32, 32))
    assert main.shape == (2, 7) and len(aux) == 3 and all(a.shape == (2, 7) for a in aux)
    head_ids = {id(p) for p in model.new_parameters()}
    assert all(id(p) in head_ids for p in model.aux.parameters())
    assert not any(id(p) in head_ids for p in model.trunk.parameters())


def test_unknown_backbone_and_stride_are_named():
    with pytest.raises(FgkdError, match="unknown backbone 'resnet5'.*resnet50"):
        FGVCNet("resnet5", 3)
    with pytest.raises(FgkdError, match="attention_stride 2"):
        FGVCNet("resnet10", 3, attention_stride=2)


def test_missing_pretrained_weights_say_how_to_seed_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed port: the download fails at once
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(FgkdError, match=r"resnet18.*not in the cache.*TORCH_HOME"):
        FGVCNet("resnet18", 3, pretrained="imagenet")


def test_frozen_networks_stay_in_eval_mode_and_receive_no_gradient():
    torch.manual_seed(0)
    teacher = FGVCNet("resnet10", 4, attention_stride=8)
    frozen = FrozenNetworks([teacher])
    student = FGVCNet("resnet10", 4, attention_stride=8)
    method = OrthogonalStudent(student, frozen, "or", 0.1)
    method.train()
    assert student.training and not teacher.training
    out = method(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert set(out.losses) == {"ce", "orth"}
    # the adaptive OR weight keeps the term at p x CE
    assert out.losses["orth"].item() == pytest.approx(0.1 * out.losses["ce"].item(), rel=1e-5)


def test_imagenet_weights_are_the_official_codes_v1_from_the_cache(tmp_path, monkeypatch):
    """pretrained: imagenet is what the official code's pretrained=True loads: IMAGENET1K_V1 (for resnet50 torchvision's
    DEFAULT is the later V2). The test seeds TORCH_HOME with a file under V1's name; V2's is absent and not
    downloadable, so taking DEFAULT fails."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    v1 = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    assert torchvision.models.ResNet50_Weights.DEFAULT != v1
    torch.manual_seed(3)
    weights = torchvision.models.resnet50().state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(weights, cache / v1.url.rsplit("/", 1)[1])
    trunk = FGVCNet("resnet50", 3, pretrained="imagenet").trunk.state_dict()
    assert trunk.keys() <= weights.keys()
    assert all(torch.equal(trunk[k], weights[k]) for k in trunk)
