"""The losses of the method, as plain functions (formulas in docs/reference/method.md), and the registry of the
aux-KD student's distillation losses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import FgkdError


def _resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize B x H x W maps to ``size``; a no-op when they already match."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def attention_energy(feature_map: torch.Tensor) -> torch.Tensor:
    """Channel sum of squares: B x C x H x W -> B x H x W."""
    return feature_map.float().pow(2).sum(dim=1)


def spatial_attention(feature_map: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Attention-transfer map (Zagoruyko & Komodakis 2017): channel sum of squares, flattened, L2-normalised.

    B x C x H x W -> B x (H*W); with ``size``, the map is resized to it before flattening.
    """
    return normalise_attention(attention_energy(feature_map), size)


def normalise_attention(energy: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """B x H x W energy maps -> (resized to ``size``) flattened, L2-normalised attention vectors."""
    if size is not None:
        energy = _resize_maps(energy, size)
    return F.normalize(energy.flatten(1), dim=1)


def orthogonal_loss(student_map: torch.Tensor, earlier_maps: list[torch.Tensor]) -> torch.Tensor:
    """AT-orthogonal: batch mean of sum_j (q_student . q_j)^2; zero only for non-overlapping maps.

    The earlier maps are constants: no gradient flows into them.
    """
    return sum((student_map * earlier.detach()).sum(dim=1).pow(2) for earlier in earlier_maps).mean()


def at_loss_from_energies(student_features: torch.Tensor, earlier_energies: list[torch.Tensor]) -> torch.Tensor:
    """``orthogonal_loss`` of the student's attention features against the earlier networks' energy maps (computed
    once, as they are frozen), every map at the student's resolution."""
    size = student_features.shape[-2:]
    return orthogonal_loss(spatial_attention(student_features, size),
                           [normalise_attention(e, size) for e in earlier_energies])


def class_activation_map(features: torch.Tensor) -> torch.Tensor:
    """The official code's CAM: channel mean of (spatial mean of F_c) * F_c. B x C x H x W -> B x H x W."""
    features = features.float()
    weights = features.mean(dim=(2, 3), keepdim=True)
    return (weights * features).mean(dim=1)


# Below this spread, relative to the map's largest magnitude, a map is constant: float32 holds about 7 digits, so
# smaller differences are rounding (a CAM sums thousands of channel products), not a place the network looks at.
CONSTANT_SPREAD = 4 * torch.finfo(torch.float32).eps


def standardise(maps: torch.Tensor) -> torch.Tensor:
    """Per image (map - mean) / std, with the unbiased std as the official code; a constant map (also 1 x 1) gives
    zeros. Its float32 mean differs from its values by rounding, and that residue divided by a std of the same
    rounding would be any number (0.49 everywhere gave 3e4): constancy is judged in float64, where equal float32
    values have a spread of exactly 0, and the float32 formula of the official code is kept for every other map."""
    flat = maps.flatten(1)
    correction = min(1, flat.shape[1] - 1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True, correction=correction).clamp_min(1e-12)
    exact = flat.detach().double()
    spread = exact.std(dim=1, keepdim=True, correction=correction)
    constant = spread <= CONSTANT_SPREAD * exact.abs().amax(dim=1, keepdim=True)
    return torch.where(constant, 0.0, (flat - mean) / std).view_as(maps)


def or_reference_maps(features: torch.Tensor) -> torch.Tensor:
    """What an earlier network contributes to the OR loss: |standardised CAM|, B x H x W."""
    return standardise(class_activation_map(features)).abs()


def or_loss_from_maps(student_features: torch.Tensor, earlier_maps: list[torch.Tensor]) -> torch.Tensor:
    """``or_loss`` with the earlier networks' |z| maps computed once (they are frozen)."""
    student = F.relu(standardise(class_activation_map(student_features)))
    size = student.shape[-2:]
    return sum((student * _resize_maps(earlier.detach(), size)).mean() for earlier in earlier_maps) / len(earlier_maps)


def or_loss(student_features: torch.Tensor, earlier_features: list[torch.Tensor]) -> torch.Tensor:
    """The OR loss of arXiv 2012.11389 (official code): mean(relu(z_student) * |z_earlier|), averaged over the list.

    z is the per-image standardised CAM; earlier maps are resized to the student's resolution.
    """
    return or_loss_from_maps(student_features, [or_reference_maps(f.detach()) for f in earlier_features])


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Hinton KD: KL(softmax(teacher/T) || softmax(student/T)) * T^2, batch mean."""
    log_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * T * T


def _split_at_target(scaled_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B x C logits -> the target class's (B) and the other classes' (B x C - 1, in class order), gathered by index:
    NCKD sees the other classes alone, with no stand-in value in the target's place (mdistiller subtracts 1000)."""
    others = torch.arange(scaled_logits.shape[1] - 1, device=labels.device)
    others = others + (others >= labels.unsqueeze(1))
    return scaled_logits.gather(1, labels.unsqueeze(1)).squeeze(1), scaled_logits.gather(1, others)


def _target_or_not(target: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """B x 2 log probabilities of (the target class, any other class), from the log-odds d of the others against the
    target: log p = -softplus(d), log(1 - p) = -softplus(-d), both accurate to float32 rounding also where a network
    is sure or unsure (the log of summed probabilities loses one end: a sum that underflows to 0 gives -inf)."""
    log_odds = torch.logsumexp(others, dim=1) - target
    return torch.stack([-F.softplus(log_odds), -F.softplus(-log_odds)], dim=1)


def decoupled_kd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                       T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the two parts of KD that decoupled KD (Zhao et al., CVPR 2022) weighs apart, each x T^2: TCKD, the
    KL between the teacher's and the student's (target, other classes) probabilities, and NCKD, the KL between their
    distributions over the non-target classes alone. KD = TCKD + (1 - teacher's target probability) x NCKD: the more
    confident the teacher, the less KD learns from how it ranks the other classes; DKD gives NCKD its own weight."""
    classes = student_logits.shape[1]
    if classes < 2:
        raise FgkdError(f"kd_loss dkd: {classes} class: decoupled KD splits the target class from the others and "
                        "needs at least 2 classes; use kd_loss kd")
    (student_target, student_others), (teacher_target, teacher_others) = (
        _split_at_target(logits.float() / T, labels) for logits in (student_logits, teacher_logits))
    tckd = F.kl_div(_target_or_not(student_target, student_others), _target_or_not(teacher_target, teacher_others),
                    reduction="none", log_target=True).sum(dim=1)
    nckd = F.kl_div(F.log_softmax(student_others, dim=1), F.log_softmax(teacher_others, dim=1), reduction="none",
                    log_target=True).sum(dim=1)
    return tckd * T * T, nckd * T * T


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, T: float,
             alpha: float, beta: float) -> torch.Tensor:
    """Decoupled KD: batch mean of alpha x TCKD + beta x NCKD (``decoupled_kd_terms``), as mdistiller's dkd_loss but
    without its warm-up (a method's step is not given the epoch). In the aux-KD student it takes KD's place, weighed
    by kd_alpha against each head's CE: at kd_alpha 0.5 a head's loss is half of mdistiller's CE + DKD."""
    tckd, nckd = decoupled_kd_terms(student_logits, teacher_logits, labels, T)
    return (alpha * tckd + beta * nckd).mean()


@dataclass(frozen=True)
class DistillationLoss:
    """One way for an auxiliary head to imitate its teacher's logits."""

    # (student logits, teacher logits, labels, temperature, **its own options) -> the batch-mean loss.
    function: Callable[..., torch.Tensor]
    # Its own options: TrainConfig field -> keyword of ``function``; the aux-KD student passes them from the config.
    options: dict[str, str] = field(default_factory=dict)


# The aux-KD student's distillation losses by name (TrainConfig.kd_loss); the schema's kd_loss enum is tested against
# it. Each is weighted by kd_alpha against the head's cross-entropy.
DISTILLATION_LOSSES = {
    "kd": DistillationLoss(lambda student, teacher, labels, T: kd_loss(student, teacher, T)),  # Hinton et al. 2015
    "dkd": DistillationLoss(dkd_loss, {"dkd_alpha": "alpha", "dkd_beta": "beta"}),  # Zhao et al. 2022
}
