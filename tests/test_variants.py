"""What makes the ablation a comparison of losses: student k of every variant starts from the same weights and
sees the same batches, so variants differ in their loss alone."""

import torch

from fgkd.train import TrainConfig, train
from conftest import TINY


def test_student_k_of_every_variant_starts_alike_and_sees_the_same_batches(tiny_data, tmp_path):
    """With learning rates 0 the weights stay the initial ones and the batch-norm statistics are those of the batches
    seen: equal across variants only if both the initialisation and the batches are."""
    frozen = TrainConfig(**{**TINY.__dict__, "epochs": 1, "lr": 0.0, "backbone_lr": 0.0})
    teacher = train("teacher", tiny_data, tmp_path / "teacher", TrainConfig(**{**TINY.__dict__, "epochs": 1}),
                    progress=False)
    variants = {"or": {"orth": "or", "orth_weight": 0.1}, "lambda0": {"orth_weight": 0.0},
                "at": {"orth": "at", "orth_weight": 1.0}}
    states = {}
    for name, options in variants.items():
        model = train("student", tiny_data, tmp_path / name, TrainConfig(**{**frozen.__dict__, **options}), [teacher],
                      index=1, progress=False)
        states[name] = torch.load(model, weights_only=True)["last_state_dict"]
    for name in ("lambda0", "at"):
        for key, value in states["or"].items():
            assert torch.equal(value, states[name][key]), (name, key)
    other_seed = train("student", tiny_data, tmp_path / "seed1", TrainConfig(**{**frozen.__dict__, "seed": 1}),
                       [teacher], index=1, progress=False)
    running_mean = "trunk.bn1.running_mean"
    other = torch.load(other_seed, weights_only=True)["last_state_dict"]
    assert not torch.equal(states["or"][running_mean], other[running_mean])  # the check can see a difference
