"""The operator registry: registration rules, construction and capability enforcement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from operators import OperatorError, create_op, create_upsampler, list_ops, op_info, register_op


def test_builtin_ops_are_listed_by_kind() -> None:
    assert {"conv", "dwconv"} <= set(list_ops("conv"))
    assert {"nearest", "bilinear", "deconv", "pixel_shuffle"} <= set(list_ops("upsample"))
    assert set(list_ops()) == set(list_ops("conv")) | set(list_ops("upsample"))
    assert op_info("conv").source == "built-in"


def test_unknown_op_suggests_closest_name() -> None:
    with pytest.raises(OperatorError, match=r"Unknown operator 'dwcon'\. Did you mean 'dwconv'\?"):
        create_op("dwcon", 8, 8)


def test_registering_twice_needs_override(restore_registry: None) -> None:
    @register_op("twice", kind="conv")
    class First(nn.Identity):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

    with pytest.raises(OperatorError, match="already registered"):
        register_op("twice", kind="conv")(First)

    @register_op("twice", kind="conv", override=True, description="second")
    class Second(First):
        pass

    assert op_info("twice").factory is Second
    assert op_info("twice").description == "second"


def test_unknown_capability_and_kind_are_rejected() -> None:
    with pytest.raises(OperatorError, match="unknown capability"):
        register_op("bad", kind="conv", strides=True)
    with pytest.raises(OperatorError, match="kind must be one of"):
        register_op("bad", kind="pool")


def test_undeclared_capabilities_are_refused(restore_registry: None) -> None:
    @register_op("fixed", kind="conv", stride=False, channel_change=False, dilation=False)
    class Fixed(nn.Conv2d):
        def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
            super().__init__(cin, cout, kernel_size, padding=kernel_size // 2)

    assert isinstance(create_op("fixed", 4, 4), Fixed)
    with pytest.raises(OperatorError, match="does not support stride 2"):
        create_op("fixed", 4, 4, stride=2)
    with pytest.raises(OperatorError, match="cannot map 4 to 8 channels"):
        create_op("fixed", 4, 8)
    with pytest.raises(OperatorError, match="does not support dilation"):
        create_op("fixed", 4, 4, dilation=2)


@pytest.mark.parametrize("name, kwargs", [("ddf", {"spatial_mean": "maybe"}), ("octconv", {"alpha": True}),
                                          ("ddf", {"head": 1.5}), ("ddf", {"branches": 1})])
def test_argument_of_the_wrong_type_is_refused(name: str, kwargs: dict) -> None:
    key = next(iter(kwargs))
    with pytest.raises(OperatorError, match=rf"argument '{key}' takes a (bool|int|float|str)"):
        create_op(name, 8, 8, **kwargs)


def test_an_int_is_accepted_where_the_default_is_a_float() -> None:
    assert create_op("octconv", 8, 8, alpha=0) is not None


def test_a_sequence_argument_is_not_read_as_its_element_type() -> None:
    assert create_op("goctconv", 12, 12, alpha_in=[0.5, 0.25, 0.25], alpha_out=[0.5, 0.25, 0.25]) is not None


def test_kind_mismatch_points_to_the_right_factory() -> None:
    with pytest.raises(OperatorError, match="create_upsampler"):
        create_op("nearest", 4, 4)
    with pytest.raises(OperatorError, match="create_op"):
        create_upsampler("conv", 4)
    with pytest.raises(OperatorError, match="takes no guidance"):
        create_upsampler("nearest", 4, guide_channels=3)


@pytest.mark.parametrize("stride,size,expected", [(1, 9, 9), (2, 9, 5), (2, 8, 4)])
def test_conv_output_size_is_ceil(stride: int, size: int, expected: int) -> None:
    for name in ("conv", "dwconv"):
        y = create_op(name, 4, 6, stride=stride)(torch.randn(1, 4, size, size))
        assert y.shape == (1, 6, expected, expected)


def test_even_kernel_is_refused() -> None:
    with pytest.raises(OperatorError, match="kernel_size must be odd"):
        create_op("conv", 4, 4, kernel_size=2)


def test_created_modules_are_tagged() -> None:
    assert create_op("conv", 4, 4).bench_op == "conv"
    assert create_upsampler("deconv", 4).bench_op == "deconv"
