"""The benchmark's figures: what it counts (FLOPs, convolutions) and the JSON line it ends with."""

import json

import jax.numpy as jnp
import pytest

from experiments import benchmark
from training import command_line, steps


def _cifar_resnet_conv_macs(n: int) -> int:
    """Forward multiply-adds of a CIFAR ResNet-(6n+2)'s convolutions and classifier, by hand."""
    stem = 32 * 32 * 3 * 16 * 9
    stages = 0
    for size, c_in, c_out in [(32, 16, 16), (16, 16, 32), (8, 32, 64)]:
        stages += size * size * c_in * c_out * 9  # first conv (strided in stages 2, 3)
        stages += (2 * n - 1) * size * size * c_out * c_out * 9
    return stem + stages + 64 * 10


def _state(net: str):
    """A fresh train state of a CIFAR-10 network."""
    return steps.create_train_state(command_line.load_config(f"configs/cifar10.py:{net}", {}))


def test_forward_macs_are_the_networks_multiply_adds():
    macs = benchmark.forward_macs(_state("resnet-20"), (32, 32, 3))
    convs_and_fc = _cifar_resnet_conv_macs(3)
    # BatchNorm, ReLU and the additions are counted too, but are under 1% of a conv net.
    assert convs_and_fc <= macs < 1.01 * convs_and_fc


@pytest.mark.parametrize("net,layers,distinct", [("resnet-20", 19, 6), ("plain-32", 31, 6)])
def test_model_convolutions_lists_every_layer_once(net, layers, distinct):
    convs = benchmark.model_convolutions(_state(net), jnp.zeros((2, 32, 32, 3)))
    assert sum(count for *_, count in convs) == layers
    assert len(convs) == distinct  # stem; 16->16; 16->32 /2; 32->32; 32->64 /2; 64->64


def test_benchmark_prints_a_json_line_with_its_figures(capsys):
    code = benchmark.main(["--config", "configs/cifar10.py:resnet-8", "--synthetic",
                           "--batch-size", "8", "--steps", "2", "--repeats", "1", "--conv-bound"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "resnet-8"
    assert result["batch_size"] == 8 and result["devices"] == 4
    assert result["flops_per_image"] == 6 * benchmark.forward_macs(
        _state("resnet-8"), (32, 32, 3))
    assert result["images_per_sec"] == pytest.approx(8 / (result["step_ms"] / 1e3), rel=1e-2)
    assert result["conv_ms"] > 0
    assert result["step_over_conv"] == pytest.approx(result["step_ms"] / result["conv_ms"],
                                                     rel=1e-2)
    assert result["input_wait_fraction"] == 0.0  # synthetic data lives on the device


def test_benchmark_rejects_unknown_arguments(capsys):
    assert benchmark.main(["--config", "configs/cifar10.py:resnet-8", "--nonsense"]) == 2
    assert "error:" in capsys.readouterr().err
