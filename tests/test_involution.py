import pytest
import torch

from rdiunet.models.involution import Involution, involve, involve_unfold, output_size


def reference_forward(module: Involution, x: torch.Tensor) -> torch.Tensor:
    """The module's forward pass with the unfold formulation in place of the fast one."""
    return involve_unfold(x, module.kernel(x), module.kernel_size, module.stride)


CASES = [
    # (channels, group_channels, kernel_size, stride, height, width)
    (16, 16, 1, 1, 9, 10),
    (32, 16, 1, 2, 9, 10),
    (32, 8, 3, 1, 8, 8),
    (48, 16, 3, 2, 11, 8),
    (16, 4, 7, 1, 12, 9),
    (32, 16, 7, 2, 13, 14),
    (8, 1, 3, 2, 6, 7),
]


@pytest.mark.parametrize("channels,group_channels,kernel_size,stride,height,width", CASES)
def test_forward_and_gradients_match_unfold_reference(
    channels, group_channels, kernel_size, stride, height, width
):
    torch.manual_seed(0)
    module = Involution(channels, kernel_size, stride, group_channels).double()
    # Train-mode BN would make the two passes depend on each other's statistics updates.
    module.eval()
    x = torch.randn(2, channels, height, width, dtype=torch.float64)

    grads = {}
    for label, forward in (("fast", module), ("reference", lambda t: reference_forward(module, t))):
        module.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = forward(xi)
        # A fixed random projection gives every output element its own gradient weight.
        weight = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        (out * weight).sum().backward()
        grads[label] = (out.detach(), xi.grad, [p.grad.clone() for p in module.parameters()])

    out_fast, gx_fast, gw_fast = grads["fast"]
    out_ref, gx_ref, gw_ref = grads["reference"]
    assert out_fast.shape == (2, channels, output_size(height, stride), output_size(width, stride))
    torch.testing.assert_close(out_fast, out_ref)
    torch.testing.assert_close(gx_fast, gx_ref)
    for g_fast, g_ref in zip(gw_fast, gw_ref, strict=True):
        torch.testing.assert_close(g_fast, g_ref)


def test_kernel_shape():
    module = Involution(64, kernel_size=3, stride=2, group_channels=16)
    kernel = module.kernel(torch.randn(2, 64, 16, 15))
    assert kernel.shape == (2, 4, 9, 8, 8)


def test_groups_are_contiguous_channel_blocks():
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    kernel = torch.randn(1, 2, 9, 5, 5, dtype=torch.float64)
    out = involve(x, kernel, kernel_size=3)
    # Channels 0..3 use kernel group 0 and channels 4..7 group 1, not an interleaving.
    torch.testing.assert_close(out[:, :4], involve(x[:, :4], kernel[:, :1], kernel_size=3))
    torch.testing.assert_close(out[:, 4:], involve(x[:, 4:], kernel[:, 1:], kernel_size=3))


@pytest.mark.parametrize("stride", [1, 2])
def test_matches_the_definition_written_as_loops(stride):
    torch.manual_seed(0)
    k, pad = 3, 1
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    ho, wo = output_size(5, stride), output_size(6, stride)
    kernel = torch.randn(1, 2, k * k, ho, wo, dtype=torch.float64)
    expected = torch.zeros(1, 4, ho, wo, dtype=torch.float64)
    for c in range(4):
        for i in range(ho):
            for j in range(wo):
                for u in range(k):
                    for v in range(k):
                        r, s = stride * i + u - pad, stride * j + v - pad
                        if 0 <= r < 5 and 0 <= s < 6:
                            expected[0, c, i, j] += kernel[0, c // 2, u * k + v, i, j] * x[0, c, r, s]
    torch.testing.assert_close(involve(x, kernel, k, stride), expected)
    torch.testing.assert_close(involve_unfold(x, kernel, k, stride), expected)


def test_one_by_one_involution_is_a_per_pixel_group_scale():
    x = torch.randn(1, 4, 3, 3)
    kernel = torch.randn(1, 2, 1, 3, 3)
    expected = torch.cat([x[:, :2] * kernel[:, 0:1, 0], x[:, 2:] * kernel[:, 1:2, 0]], dim=1)
    torch.testing.assert_close(involve(x, kernel, kernel_size=1), expected)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"channels": 24, "group_channels": 16}, "multiple of group_channels"),
        ({"channels": 16, "kernel_size": 4}, "odd"),
    ],
)
def test_invalid_configuration_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Involution(**kwargs)
