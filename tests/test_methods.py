"""Each training method's named losses against a hand computation on fixed tensors: which teacher each auxiliary head
imitates, how kd_alpha weighs KD against CE, which weight each orthogonal loss gets, and that the options of a stage's
config reach the method."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fgkd.config import TrainConfig
from fgkd.losses import dkd_loss, kd_loss, or_loss, orthogonal_loss, spatial_attention
from fgkd.methods import METHODS, AuxKD, CrossEntropy, FrozenNetworks, OrthogonalStudent
from fgkd.models import FGVCNet

pytestmark = pytest.mark.unit


class FixedLogits(nn.Module):
    """A frozen 'teacher' that answers every batch with the same logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, images):
        return self.logits[: len(images)]


def batch():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2])


def teachers() -> list[torch.Tensor]:
    """Two teachers that disagree: head i imitating teacher j != i gives another KD value."""
    first = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
    second = torch.tensor([[0.0, 0.0, 0.0, 3.0], [2.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 1.0]])
    return [first, second]


def aux_student(alpha: float = 0.3, temperature: float = 2.0) -> AuxKD:
    torch.manual_seed(0)
    model = FGVCNet("resnet10", 4, "gap", 8, attention_stride=8, aux_heads=2)
    return AuxKD(model, FrozenNetworks([FixedLogits(t) for t in teachers()]), temperature, alpha)


def test_aux_head_i_imitates_teacher_i_and_kd_alpha_weighs_kd_against_ce():
    method = aux_student(alpha=0.3, temperature=2.0)
    images, labels = batch()
    out = method(images, labels)
    main, aux = method.model(images)
    first, second = teachers()
    kd = kd_loss(aux[0], first, 2.0) + kd_loss(aux[1], second, 2.0)
    swapped = kd_loss(aux[0], second, 2.0) + kd_loss(aux[1], first, 2.0)
    assert abs(float((kd - swapped).detach())) > 0.1  # the check can tell the pairing
    torch.testing.assert_close(out.losses["kd"], 0.3 * kd)
    torch.testing.assert_close(out.losses["aux_ce"], 0.7 * (F.cross_entropy(aux[0], labels)
                                                           + F.cross_entropy(aux[1], labels)))
    torch.testing.assert_close(out.losses["ce"], F.cross_entropy(main, labels))
    assert set(out.losses) == {"ce", "kd", "aux_ce"}
    torch.testing.assert_close(out.logits, main)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_kd_alpha_at_its_ends_leaves_one_of_the_two_terms(alpha):
    with torch.no_grad():
        out = aux_student(alpha=alpha)(*batch())
    assert (float(out.losses["kd"]) == 0) == (alpha == 0) and (float(out.losses["aux_ce"]) == 0) == (alpha == 1)


def test_a_stage_config_reaches_each_method():
    model = FGVCNet("resnet10", 4, "gap", 8, attention_stride=8, aux_heads=1)
    config = dataclasses.replace(TrainConfig(), kd_temperature=3.0, kd_alpha=0.2, orth="at", orth_weight=0.7)
    frozen = FrozenNetworks([FixedLogits(teachers()[0])])
    aux = METHODS["auxkd"].from_config(model, frozen, config)
    assert isinstance(aux, AuxKD) and (aux.temperature, aux.alpha) == (3.0, 0.2)
    student = METHODS["student"].from_config(model, frozen, config)
    assert isinstance(student, OrthogonalStudent) and (student.variant, student.weight) == ("at", 0.7)
    assert isinstance(METHODS["teacher"].from_config(model, frozen, config), CrossEntropy)


def test_kd_loss_dkd_gives_each_head_the_decoupled_kd_of_its_teacher_with_the_configs_weights():
    """From the stage's config to the step's losses: kd_loss picks DKD, dkd_alpha and dkd_beta weigh its parts, and
    kd_alpha still weighs it against each head's CE."""
    config = dataclasses.replace(TrainConfig(), kd_loss="dkd", dkd_alpha=2.0, dkd_beta=5.0, kd_temperature=2.0,
                                 kd_alpha=0.3)
    torch.manual_seed(0)
    model = FGVCNet("resnet10", 4, "gap", 8, attention_stride=8, aux_heads=2)
    method = METHODS["auxkd"].from_config(model, FrozenNetworks([FixedLogits(t) for t in teachers()]), config)
    images, labels = batch()
    out = method(images, labels)
    main, aux = method.model(images)
    first, second = teachers()
    dkd = dkd_loss(aux[0], first, labels, 2.0, 2.0, 5.0) + dkd_loss(aux[1], second, labels, 2.0, 2.0, 5.0)
    others = {"kd": kd_loss(aux[0], first, 2.0) + kd_loss(aux[1], second, 2.0),
              "swapped weights": dkd_loss(aux[0], first, labels, 2.0, 5.0, 2.0)
              + dkd_loss(aux[1], second, labels, 2.0, 5.0, 2.0)}
    assert all(abs(float((dkd - other).detach())) > 0.1 for other in others.values())  # the check can tell them
    torch.testing.assert_close(out.losses["kd"], 0.3 * dkd)
    torch.testing.assert_close(out.losses["aux_ce"], 0.7 * (F.cross_entropy(aux[0], labels)
                                                           + F.cross_entropy(aux[1], labels)))
    torch.testing.assert_close(out.losses["ce"], F.cross_entropy(main, labels))


def student_of(variant: str, weight: float) -> OrthogonalStudent:
    torch.manual_seed(0)
    teacher = FGVCNet("resnet10", 4, "gap", 8, attention_stride=8).eval()
    student = FGVCNet("resnet10", 4, "gap", 8, attention_stride=8)
    return OrthogonalStudent(student, FrozenNetworks([teacher]), variant, weight).train()


def run_student(variant, weight):
    """A student's step on a batch, and the teacher's attention features of that batch."""
    method = student_of(variant, weight)
    images, labels = batch()
    out = method(images, labels)
    with torch.no_grad():
        earlier = method.earlier.networks[0].attention_only(images)
    return method, out, labels, earlier


def test_at_is_a_fixed_lambda_times_the_attention_transfer_penalty_against_every_earlier_map():
    method, out, labels, earlier = run_student("at", 0.7)
    size = method.model.attention_features.shape[-2:]
    raw = orthogonal_loss(spatial_attention(method.model.attention_features, size), [spatial_attention(earlier, size)])
    torch.testing.assert_close(out.extras["orth_raw"], raw.detach())
    torch.testing.assert_close(out.losses["orth"], 0.7 * raw)
    torch.testing.assert_close(out.losses["ce"], F.cross_entropy(out.logits, labels))


def test_or_is_the_official_loss_of_the_students_features_against_the_earlier_networks():
    method, out, _, earlier = run_student("or", 0.1)
    torch.testing.assert_close(out.extras["orth_raw"], or_loss(method.model.attention_features, [earlier]).detach())


@pytest.mark.parametrize("variant", ["or", "at"])
def test_weight_0_or_no_earlier_network_is_plain_cross_entropy(variant):
    images, labels = batch()
    for method in (student_of(variant, 0.0), OrthogonalStudent(student_of(variant, 1.0).model, FrozenNetworks([]),
                                                                variant, 1.0)):
        out = method(images, labels)
        assert set(out.losses) == {"ce"}
        torch.testing.assert_close(out.losses["ce"], F.cross_entropy(out.logits, labels))


def test_the_teachers_loss_is_cross_entropy_named_ce():
    """The names are the history's columns and what the reports read."""
    model = FGVCNet("resnet10", 4, "gap", 8, attention_stride=8)
    images, labels = batch()
    out = CrossEntropy(model)(images, labels)
    assert list(out.losses) == ["ce"]
    torch.testing.assert_close(out.losses["ce"], F.cross_entropy(out.logits, labels))


def test_earlier_networks_stay_frozen_in_eval_mode_when_the_student_trains():
    method = student_of("or", 0.1)
    teacher = method.earlier.networks[0]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method.train()
    images, labels = batch()
    sum(method(images, labels).losses.values()).backward()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in method.earlier.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN statistics too
