import sys

import pytest
import torch

from rdiunet.bench import count_parameters, model_costs
from rdiunet.errors import UserError
from rdiunet.models import build, check_model, missing_packages, names
from rdiunet.models.rdiunet import DenseBottom, ResidualInvolutionBlock

# The paper's Table 1 parameter counts and the tolerance each default configuration must meet.
PAPER_PARAMS = {"unet": (15.6e6, 0.02), "rdiunet": (5.9e6, 0.05)}


def registered():
    """Every registered model; one whose optional package is missing is skipped, naming it."""
    return [
        pytest.param(name, marks=pytest.mark.skip(reason=f"{name} needs {', '.join(missing_packages(name))}"))
        if missing_packages(name)
        else name
        for name in names()
    ]


def test_the_papers_models_are_registered():
    assert {"unet", "rdiunet"} <= set(names())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_default_parameter_count_matches_paper(name):
    target, tolerance = PAPER_PARAMS[name]
    params = count_parameters(build(name))
    assert abs(params - target) <= tolerance * target, f"{name}: {params:,} vs paper {target:,.0f}"


def test_rdiunet_has_at_least_sixty_percent_fewer_parameters():
    # The paper's claim: 15.6M -> 5.9M is 62% fewer.
    ratio = count_parameters(build("rdiunet")) / count_parameters(build("unet"))
    assert ratio < 0.40


@pytest.mark.parametrize("name", registered())
@pytest.mark.parametrize("size", [128, 256])
def test_output_is_one_logit_map_of_the_input_size(name, size):
    torch.manual_seed(0)
    model = build(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, size, size))
    assert out.shape == (2, 1, size, size)
    assert torch.isfinite(out).all()


# Narrow configurations keep the CPU tests fast; the structure is the same as the defaults.
SMALL = {
    "unet": {"widths": (8, 16, 32, 64, 128)},
    "rdiunet": {"widths": (16, 32, 64, 128), "dense_blocks": 2, "growth": 32},
}


@pytest.mark.parametrize("name", registered())
def test_non_square_input_and_more_input_channels(name):
    out = build(name, in_channels=3, **SMALL.get(name, {}))(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 1, 64, 96)


@pytest.mark.parametrize("name", ["unet", "rdiunet"])
def test_side_not_divisible_by_16_is_rejected(name):
    with pytest.raises(ValueError, match="divisible by 16"):
        build(name)(torch.rand(1, 1, 120, 128))


@pytest.mark.parametrize("name", registered())
def test_gradients_reach_every_parameter(name):
    model = build(name, **SMALL.get(name, {}))
    model(torch.rand(2, 1, 32, 32)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UserError, match=f"unknown model 'vnet'; known models: {', '.join(names())}$"):
        build("vnet")


@pytest.mark.parametrize("name", registered())
def test_every_option_of_a_wrong_type_is_refused_in_one_line(name):
    import inspect

    from rdiunet.models.registry import builder_of

    for option, parameter in inspect.signature(builder_of(name)).parameters.items():
        if option == "in_channels" or parameter.default is inspect.Parameter.empty:
            continue
        with pytest.raises(UserError, match=f"invalid option for model '{name}': {option}="):
            check_model(name, {option: {"not": "an option value"}})


def test_a_model_whose_package_is_missing_is_named_with_what_to_install(monkeypatch, capsys):
    from rdiunet import cli

    monkeypatch.setitem(sys.modules, "monai", None)  # how Python marks a package as absent
    assert missing_packages("monai_unet") == ["monai"]
    needs = r"model 'monai_unet' needs monai: pip install 'rdiunet-bench\[monai\]'"
    with pytest.raises(UserError, match=needs):
        build("monai_unet")
    # Its name and options are still checked; that it builds is left to the job that builds it.
    check_model("monai_unet", {"channels": [8, 16, 32]})
    with pytest.raises(UserError, match="invalid option for model 'monai_unet'"):
        check_model("monai_unet", {"depth": 3})
    rows = {row["name"]: row for row in model_costs()}
    assert rows["monai_unet"]["needs"] == "monai" and "params" in rows["unet"]
    assert cli.main(["info"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("monai_")]
    assert lines and all("needs monai: pip install 'rdiunet-bench[monai]'" in line for line in lines)


def test_a_model_outside_the_package_is_named_by_its_import_path(tmp_path, monkeypatch):
    (tmp_path / "outside_nets.py").write_text(
        "import torch\n\n\n"
        "def build(in_channels=1, width=4):\n"
        "    return torch.nn.Conv2d(in_channels, 1, 3, padding=1) if width else None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build("outside_nets:build", width=8)
    assert model(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(UserError, match="invalid option for model 'outside_nets:build': width='x'"):
        build("outside_nets:build", width="x")
    with pytest.raises(UserError, match="outside_nets has no function 'missing'"):
        build("outside_nets:missing")
    with pytest.raises(UserError, match="cannot import the model factory 'no_such_package:build'.*PATH"):
        build("no_such_package:build")


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="invalid option for model 'unet'"):
        build("unet", depth=3)


def test_residual_involution_block_is_identity_plus_body():
    block = ResidualInvolutionBlock(16, dropout=0.0).eval()
    # Zeroing the last BN's scale and shift silences the body: the block must pass x through.
    last_bn = block.body[3][1]
    torch.nn.init.zeros_(last_bn.weight)
    torch.nn.init.zeros_(last_bn.bias)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(block(x), x)


def test_dense_bottom_concatenates_input_and_every_block_output():
    bottom = DenseBottom(in_channels=32, blocks=3, growth=16, dropout=0.0).eval()
    x = torch.randn(1, 32, 4, 4)
    out = bottom(x)
    assert out.shape == (1, 32 + 3 * 16, 4, 4)
    torch.testing.assert_close(out[:, :32], x)
    # Block k reads the input plus k earlier outputs.
    assert [b[0][0].in_channels for b in bottom.blocks] == [32, 48, 64]


def test_classic_two_conv_unet_has_the_textbook_31m_parameters():
    assert count_parameters(build("unet", convs_per_level=2)) == pytest.approx(31.0e6, rel=0.01)
