"""The losses against hand computations and the official code's formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from fgkd.errors import FgkdError
from fgkd.losses import (DISTILLATION_LOSSES, at_loss_from_energies, decoupled_kd_terms, dkd_loss, kd_loss, or_loss,
                         or_loss_from_maps, or_reference_maps, orthogonal_loss, spatial_attention, standardise)
from fgkd.methods import FrozenNetworks, OrthogonalStudent
from fgkd.models import FGVCNet

pytestmark = pytest.mark.unit


def test_spatial_attention_is_the_normalised_channel_energy():
    features = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 1.0]]]])  # 1 x 2 x 2 x 2
    energy = torch.tensor([2.0, 4.0, 4.0, 2.0])
    torch.testing.assert_close(spatial_attention(features), (energy / energy.norm()).unsqueeze(0))
    q = spatial_attention(torch.randn(3, 5, 7, 7), size=(4, 4))
    assert q.shape == (3, 16)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(3))


def test_orthogonal_loss_identical_maps_give_the_maximum_disjoint_give_zero():
    torch.manual_seed(0)
    q = spatial_attention(torch.randn(4, 8, 6, 6))
    assert orthogonal_loss(q, [q]).item() == pytest.approx(1.0)
    assert orthogonal_loss(q, [q, q]).item() == pytest.approx(2.0)
    left = torch.zeros(4, 8, 6, 6)
    left[..., :3] = torch.rand(4, 8, 6, 3) + 0.1
    right = left.flip(-1)
    assert orthogonal_loss(spatial_attention(left), [spatial_attention(right)]).item() == 0.0
    others = [spatial_attention(torch.randn(4, 8, 6, 6)) for _ in range(3)]
    assert 0 < orthogonal_loss(q, others).item() < 3


def test_orthogonal_loss_is_the_batch_mean_of_the_summed_squared_overlaps():
    student = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    earlier = [torch.tensor([[0.6, 0.8], [0.6, 0.8]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])]
    # image 1: 0.6^2 + 0^2; image 2: 1^2 + 0.6^2
    assert orthogonal_loss(student, earlier).item() == pytest.approx((0.36 + 1.36) / 2)


def test_at_compares_earlier_maps_of_another_resolution_at_the_students():
    """An earlier network of another attention_stride (the orstride4 ablation): its energy map is resized
    bilinearly to the student's grid before normalising."""
    torch.manual_seed(0)
    student = torch.randn(2, 4, 8, 8)
    energy = torch.rand(2, 4, 4)
    resized = F.interpolate(energy.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False).squeeze(1)
    expected = orthogonal_loss(spatial_attention(student), [F.normalize(resized.flatten(1), dim=1)])
    torch.testing.assert_close(at_loss_from_energies(student, [energy]), expected)


def official_or_loss(fs, ft):
    """The official code's FeatureLoss, written out per image as it is there."""
    def cam(feature):
        out = torch.zeros(feature.shape[0], *feature.shape[2:])
        for b in range(feature.shape[0]):
            weights = feature[b].mean(dim=-2, keepdim=True).mean(dim=-1, keepdim=True)
            out[b] = (weights * feature[b]).mean(dim=0)
        return out

    def gauss(maps):
        return torch.stack([(m - m.mean()) / m.std() for m in maps])

    return torch.mean(torch.clamp(gauss(cam(fs)), 0) * torch.abs(gauss(cam(ft))))


def test_or_loss_equals_the_official_formula_on_random_tensors():
    torch.manual_seed(1)
    student = torch.randn(3, 16, 7, 7)
    earlier = [torch.randn(3, 16, 7, 7), torch.randn(3, 16, 7, 7)]
    expected = sum(official_or_loss(student, e) for e in earlier) / 2
    torch.testing.assert_close(or_loss(student, earlier), expected)


@pytest.mark.parametrize("value", [0.1, 0.3, 0.49, 123.4])
@pytest.mark.parametrize("side", [1, 2, 7, 28])
def test_a_constant_map_standardises_to_zero_with_no_gradient(value, side):
    """Its float32 mean differs from its values by rounding: dividing that by a std of rounding gave 3e4 for 0.49."""
    maps = torch.full((2, side, side), value, requires_grad=True)
    z = standardise(maps)
    z.sum().backward()
    assert torch.equal(z, torch.zeros_like(z)) and torch.equal(maps.grad, torch.zeros_like(maps))


def test_a_map_that_differs_only_by_float32_rounding_is_constant_and_others_keep_the_official_formula():
    flat = torch.full((1, 49), 0.49)
    flat[0, ::2] = torch.nextafter(torch.tensor(0.49), torch.tensor(1.0))  # one unit in the last place apart
    assert torch.equal(standardise(flat.view(1, 7, 7)), torch.zeros(1, 7, 7))
    varied = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([(m - m.mean()) / m.std() for m in varied])
    assert torch.equal(standardise(varied), expected)  # bit for bit: the published numbers stay


def test_an_image_whose_features_are_constant_adds_nothing_to_the_or_loss_and_the_rest_is_the_official_value():
    """Before: a constant student map gave a raw OR of about 1e4 and a student gradient of about 4e4."""
    torch.manual_seed(3)
    student = torch.randn(2, 16, 7, 7, requires_grad=True)
    earlier = torch.randn(2, 16, 7, 7)
    constant = student.detach().clone()
    constant[0] = 0.49  # image 0: the same value everywhere, so its CAM is constant
    constant.requires_grad_(True)
    value = or_loss(constant, [earlier])
    value.backward()
    # Per image the official formula averages over the map, so image 1 alone contributes half of its own loss.
    torch.testing.assert_close(value, official_or_loss(constant[1:].detach(), earlier[1:]) / 2)
    assert torch.equal(constant.grad[0], torch.zeros_like(constant.grad[0]))
    assert 0 < constant.grad[1].abs().max() < 1
    flat = earlier.clone()
    flat[1] = 0.1  # an earlier network's constant map: nowhere in particular, so no penalty for image 1
    torch.testing.assert_close(or_loss(student, [flat]), official_or_loss(student[:1].detach(), flat[:1]) / 2)


def test_or_loss_is_largest_where_the_student_looks_where_the_earlier_network_looks():
    torch.manual_seed(2)
    base = torch.rand(2, 8, 8, 8)
    base[..., 2:4, 2:4] += 5  # a strong blob
    moved = base.roll(shifts=(4, 4), dims=(2, 3))
    assert or_loss(base, [base]) > 2 * or_loss(moved, [base])


def test_or_loss_resizes_earlier_maps_to_the_student_resolution():
    student = torch.randn(2, 4, 8, 8)
    earlier = torch.randn(2, 4, 4, 4)
    upsampled = F.interpolate(earlier, size=(8, 8), mode="nearest")
    assert math.isfinite(or_loss(student, [earlier]).item())
    assert or_loss(student, [earlier]).shape == or_loss(student, [upsampled]).shape == ()


@pytest.mark.parametrize("loss", ["or", "at"])
def test_gradient_flows_only_into_the_student(loss):
    student = torch.randn(2, 4, 6, 6, requires_grad=True)
    earlier = torch.randn(2, 4, 6, 6, requires_grad=True)
    value = or_loss(student, [earlier]) if loss == "or" else \
        orthogonal_loss(spatial_attention(student), [spatial_attention(earlier)])
    value.backward()
    assert earlier.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_kd_loss_is_the_batch_mean_kl_scaled_by_t_squared():
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    teacher = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    for T in (1.0, 2.0, 4.0):
        p = torch.softmax(teacher / T, dim=1)
        q = torch.softmax(student / T, dim=1)
        kl = (p * (p.log() - q.log())).sum(dim=1).mean()
        torch.testing.assert_close(kd_loss(student, teacher, T), kl * T * T)
    assert kd_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def paper_dkd(student, teacher, labels, T, alpha, beta):
    """Decoupled KD from its definitions (Zhao et al., CVPR 2022, section 3.1), image by image in float64: TCKD =
    KL(b_teacher || b_student) over b = (p_target, 1 - p_target), NCKD = KL over the non-target classes' renormalised
    probabilities; (alpha TCKD + beta NCKD) x T^2, batch mean. The scaling, the reduction and the argument meanings are
    those of mdistiller's dkd_loss (megvii-research/mdistiller, mdistiller/distillers/DKD.py, commit
    e8c5bb331e78c9d79a8894ca233caae78531cf7f), written anew here: its code is not copied into this repository."""
    total = 0.0
    for s, t, y in zip(student.double() / T, teacher.double() / T, labels.tolist()):
        p_s, p_t = s.softmax(0), t.softmax(0)
        others = [c for c in range(len(s)) if c != y]
        b_s, b_t = (torch.stack([p[y], p[others].sum()]) for p in (p_s, p_t))
        q_s, q_t = p_s[others] / b_s[1], p_t[others] / b_t[1]
        total += alpha * (b_t * (b_t / b_s).log()).sum() + beta * (q_t * (q_t / q_s).log()).sum()
    return total * T * T / len(labels)


def logit_batch(seed: int, images: int, classes: int, confident_teacher: bool):
    """Fixed random logits and labels; a confident teacher puts 99.99% or more on the target at T = 1."""
    generator = torch.Generator().manual_seed(seed)
    student, teacher = (3 * torch.randn(images, classes, generator=generator) for _ in range(2))
    labels = torch.randint(classes, (images,), generator=generator)
    if confident_teacher:
        teacher[torch.arange(images), labels] += 15.0
    return student, teacher, labels


@pytest.mark.parametrize("images, classes", [(1, 2), (5, 4), (16, 200)])
@pytest.mark.parametrize("confident_teacher", [False, True])
def test_dkd_loss_is_the_papers_tckd_and_nckd_weighted_by_alpha_and_beta(images, classes, confident_teacher):
    student, teacher, labels = logit_batch(images + classes, images, classes, confident_teacher)
    for T in (1.0, 2.0, 4.0):
        for alpha, beta in ((1.0, 8.0), (0.5, 2.0), (1.0, 0.0), (0.0, 1.0)):
            expected = paper_dkd(student, teacher, labels, T, alpha, beta).float()
            # atol: float32 log probabilities are each off by about 1e-7, and the KL is scaled by T^2.
            torch.testing.assert_close(dkd_loss(student, teacher, labels, T, alpha, beta), expected, rtol=1e-5,
                                       atol=1e-6 * T * T, msg=lambda m: f"T {T}, alpha {alpha}, beta {beta}: {m}")


def test_kd_is_tckd_plus_the_teachers_non_target_probability_times_nckd():
    """The paper's identity (eq. 5), exact image by image: KD lets a confident teacher silence NCKD."""
    student, teacher, labels = logit_batch(7, 6, 5, confident_teacher=False)
    teacher[torch.arange(3), labels[:3]] += 15.0  # half the images with a confident teacher
    for T in (1.0, 3.0):
        tckd, nckd = decoupled_kd_terms(student, teacher, labels, T)
        non_target = 1 - torch.softmax(teacher / T, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        per_image = torch.stack([kd_loss(student[i:i + 1], teacher[i:i + 1], T) for i in range(len(labels))])
        torch.testing.assert_close(tckd + non_target * nckd, per_image)
        assert non_target[:3].max() < 0.1 and non_target[3:].min() > 0.5


def test_dkd_stays_finite_where_a_network_is_sure():
    """A margin of 120 logits at T = 1: the student's other classes sum to 0 in float32 probabilities (a formula
    that takes their log gives inf); in log space the value is the float64 one."""
    student = torch.tensor([[120.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    teacher = torch.tensor([[30.0, 0.0, 2.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    assert torch.softmax(student, dim=1)[0, 1:].sum() == 0
    torch.testing.assert_close(dkd_loss(student, teacher, labels, 1.0, 1.0, 8.0),
                               paper_dkd(student, teacher, labels, 1.0, 1.0, 8.0).float())


def test_dkd_of_one_class_is_one_line_naming_the_fix():
    with pytest.raises(FgkdError, match=r"^kd_loss dkd: 1 class: .* needs at least 2 classes; use kd_loss kd$"):
        dkd_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 4.0, 1.0, 8.0)


def test_each_distillation_loss_takes_the_labels_and_its_own_options():
    """The registry's one call signature: kd ignores the labels, dkd gets alpha and beta from its declared options."""
    student, teacher, labels = logit_batch(3, 4, 6, confident_teacher=False)
    kd = DISTILLATION_LOSSES["kd"]
    assert kd.options == {}
    assert torch.equal(kd.function(student, teacher, labels, 2.0), kd_loss(student, teacher, 2.0))
    assert torch.equal(kd.function(student, teacher, labels.flip(0), 2.0), kd_loss(student, teacher, 2.0))
    dkd = DISTILLATION_LOSSES["dkd"]
    options = {keyword: weight for keyword, weight in zip(dkd.options.values(), (0.5, 3.0))}
    assert options == {"alpha": 0.5, "beta": 3.0}
    assert torch.equal(dkd.function(student, teacher, labels, 2.0, **options),
                       dkd_loss(student, teacher, labels, 2.0, 0.5, 3.0))


def or_student(weight: float) -> OrthogonalStudent:
    """Student 1 of a tiny ResNet against a frozen teacher, attention at stride 8 (layer2); same seeds every call."""
    torch.manual_seed(0)
    teacher = FGVCNet("resnet10", 4, "official", 32, attention_stride=8).eval()
    student = FGVCNet("resnet10", 4, "official", 32, attention_stride=8)
    return OrthogonalStudent(student, FrozenNetworks([teacher]), "or", weight).train()


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])


def test_adaptive_or_term_is_p_ce_with_the_gradient_of_the_or_loss_scaled_by_p_ce_over_or():
    """orth == p x CE holds by construction; what matters is its gradient. With the weight p x CE / OR detached,
    d orth / d features = (p x CE / OR) x d OR / d features, and nothing flows back through CE into the head."""
    method = or_student(0.1)
    images, labels = fixed_batch()
    out = method(images, labels)
    ce, orth, raw = out.losses["ce"], out.losses["orth"], out.extras["orth_raw"]
    features = method.model.attention_features
    torch.testing.assert_close(orth, 0.1 * ce)
    with torch.no_grad():
        teacher_maps = [or_reference_maps(method.earlier.networks[0].attention_only(images))]
    or_value = or_loss_from_maps(features, teacher_maps)  # the OR loss again, a graph of its own
    torch.testing.assert_close(or_value.detach(), raw)

    (expected,) = torch.autograd.grad(or_value, features, retain_graph=True)
    (gradient,) = torch.autograd.grad(orth, features, retain_graph=True)
    assert gradient.abs().sum() > 0
    torch.testing.assert_close(gradient, float(0.1 * ce.detach() / raw) * expected)
    head = list(method.model.head.parameters())
    assert all(g is None for g in torch.autograd.grad(orth, head, allow_unused=True))


def test_one_step_with_p_0_1_moves_only_the_layers_up_to_the_attention_map_away_from_p_0():
    after = {}
    for weight in (0.0, 0.1):
        method = or_student(weight)
        optimizer = torch.optim.SGD(method.model.parameters(), lr=0.1)
        out = method(*fixed_batch())
        sum(out.losses.values()).backward()
        optimizer.step()
        after[weight] = method.model.state_dict()
    differs = {k for k in after[0.0] if not torch.equal(after[0.0][k], after[0.1][k])}
    assert differs and all(k.startswith(("trunk.conv1", "trunk.bn1", "trunk.layer1", "trunk.layer2")) for k in differs)
    assert {"trunk.conv1.weight", "trunk.layer2.0.conv2.weight"} <= differs


def test_standardise_of_a_two_position_map_uses_the_unbiased_std():
    """Two positions, the fewest a map may have: (x - mean) / std with the sample std (n - 1), as the official code."""
    z = standardise(torch.tensor([[[1.0, 3.0]]]))
    torch.testing.assert_close(z, torch.tensor([[[-1.0, 1.0]]]) / math.sqrt(2))


def test_an_all_zero_map_and_a_large_map_constant_up_to_rounding_standardise_to_zero():
    """A dead ReLU map (zeros: no spread, no magnitude) and a map of about 1000 whose values differ by float32
    rounding alone: constancy is judged relative to each map's own magnitude."""
    large = torch.full((1, 4, 4), 1000.0)
    large[0, 0, 0] = torch.nextafter(torch.tensor(1000.0), torch.tensor(2000.0))
    for maps in (torch.zeros(1, 3, 3), large):
        assert torch.equal(standardise(maps), torch.zeros_like(maps))


def test_each_map_of_a_batch_is_judged_constant_by_its_own_magnitude():
    """A small map that varies is standardised as alone, beside a large one in the same batch."""
    small = torch.tensor([[1e-3, 2e-3], [3e-3, 4e-3]])
    batch = torch.stack([small, torch.full((2, 2), 1e4) + torch.arange(4.0).view(2, 2)])
    torch.testing.assert_close(standardise(batch)[0], standardise(small.unsqueeze(0))[0])
    assert standardise(batch)[0].abs().min() > 0.3
