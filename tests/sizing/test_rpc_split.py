"""plan --rpc's rule: llama.cpp's proportional split of layers over devices by free memory."""

from __future__ import annotations

import pytest

from edge_qwen.sizing.rpc_split import layer_devices


def test_layers_follow_the_cumulative_share_of_free_memory() -> None:
    # 24 layers + output over two equal workers: 13 on the first (il / 25 < 0.5), 11 + the output after
    owner = layer_devices(24, [8, 8])
    assert owner.count(0) == 13 and owner.count(1) == 12 and owner[-1] == 1
    # a worker with three times the memory takes three times the layers
    assert layer_devices(24, [1, 3]).count(1) == 18  # 17 layers + output: il / 25 >= 0.25 from il 7
    assert layer_devices(4, [5]) == [0] * 5


def test_no_free_memory_is_refused() -> None:
    with pytest.raises(ValueError, match="no device"):
        layer_devices(24, [0, 0])
