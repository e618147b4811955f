import torch
from torch import nn

from rdiunet.bench import count_flops, count_parameters


def test_flops_of_a_convolution_are_two_per_multiply_add():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, size=10, in_channels=3) == 2 * 3 * 8 * 9 * 10 * 10


def test_flop_count_leaves_the_model_untouched():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)).train()
    before = [p.detach().clone() for p in model.parameters()]
    count_flops(model, size=16)
    assert model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_parameter_count():
    assert count_parameters(nn.Linear(10, 3)) == 33
