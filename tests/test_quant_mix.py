"""The per-tensor mix: the knapsack spends the budget where it buys the most and never exceeds it,
and the whole search (importance matrix, measurement, choice, measured pick) turns a tiny Qwen3.5
into one file no larger than asked for, better than the standard type of that size on the search's
own measure, with its mix and quality in the manifest."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_qwen import quant_mix
from edge_qwen.cli import main
from edge_qwen.errors import QuantizeError, RequantizeRefusedError
from edge_qwen.quant_mix import QT, Option, TensorStats
from edge_qwen.quant_search import search
from edge_qwen.quantize import quantize


def tensor(name: str, *options: tuple[QT, int, float]) -> TensorStats:
    return TensorStats(name, 1000, [Option(t, b, e) for t, b, e in options])


SMALL_SENSITIVE = tensor(
    "blk.0.attn_v.weight", (QT.Q4_0, 100, 0.10), (QT.Q5_0, 120, 0.02), (QT.Q8_0, 200, 0.001)
)
BIG_ROBUST = tensor(
    "blk.0.ffn_up.weight", (QT.Q4_0, 1000, 0.010), (QT.Q5_0, 1200, 0.004), (QT.Q8_0, 2000, 0.0)
)


def test_the_budget_goes_where_a_byte_buys_the_most_loss() -> None:
    mix = quant_mix.choose([SMALL_SENSITIVE, BIG_ROBUST], budget=1100 + 20)
    assert mix.types == {"blk.0.attn_v.weight": "Q5_0", "blk.0.ffn_up.weight": "Q4_0"} and mix.bytes == 1120
    richer = quant_mix.choose([SMALL_SENSITIVE, BIG_ROBUST], budget=1500)
    assert richer.types == {"blk.0.attn_v.weight": "Q8_0", "blk.0.ffn_up.weight": "Q5_0"}
    assert richer.bytes <= 1500 and richer.loss < mix.loss


def test_dominated_types_are_never_chosen_and_weights_shift_the_choice() -> None:
    odd = tensor("token_embd.weight", (QT.Q4_0, 100, 0.05), (QT.IQ4_NL, 100, 0.03), (QT.Q5_0, 150, 0.04))
    assert [o.type for o in quant_mix._hull(odd.options, 1.0)] == [QT.IQ4_NL]  # same bytes, less loss
    plain = quant_mix.choose([SMALL_SENSITIVE, BIG_ROBUST], budget=1320)
    weighted = quant_mix.choose([SMALL_SENSITIVE, BIG_ROBUST], 1320, {"ffn_up": 50.0}, "ffn x50")
    assert plain.types["blk.0.ffn_up.weight"] == "Q4_0" and weighted.types["blk.0.ffn_up.weight"] == "Q5_0"


def test_a_budget_below_the_cheapest_types_is_refused() -> None:
    with pytest.raises(ValueError, match="cheapest types take 1100 bytes"):
        quant_mix.choose([SMALL_SENSITIVE, BIG_ROBUST], budget=1000)


@pytest.mark.slow
def test_a_search_fits_the_target_and_records_what_it_chose(
    hybrid_gguf: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "tiny-f32.gguf"
    model.write_bytes(hybrid_gguf("qwen35").read_bytes())
    standard = quantize(model, "q4_0", tmp_path / "std.gguf", quiet=True)
    # the command: a target instead of types (the importance matrix it computes is reused below)
    assert (
        main(["quantize", str(model), "--target-size", str(standard.size), "--json", "-o", str(tmp_path)])
        == 0
    )
    out = json.loads(capsys.readouterr().out)["outputs"][0]
    assert out["size"] <= standard.size and re.fullmatch(
        r"tiny-MIX-\d+\.\d\dbpw\.gguf", Path(out["path"]).name
    )
    assert out["quant_type"] == "MIX" and out["tried"] and out["quality"]["top1_pct"] > 0
    manifest = json.loads(Path(out["path"] + ".json").read_text())
    assert manifest["mix"]["counts"] == out["mix"] and sum(out["mix"].values()) == len(
        manifest["mix"]["types"]
    )
    assert (
        manifest["imatrix"]["chunks"] >= 1 and manifest["search"]["calibration"] == "imatrix_calibration.txt"
    )
    assert manifest["quality"]["mean_kl"] == out["quality"]["mean_kl"]
    assert main(["info", out["path"], "--json"]) == 0  # the file says what it is
    info = json.loads(capsys.readouterr().out)
    assert info["file_type"] == "MIX" and info["searched_mix"].startswith("searched per-tensor mix: ")
    # the library: the same inputs give the same mix
    again = search(model, standard.size, tmp_path / "again.gguf", quiet=True)
    assert again.mix.types == manifest["mix"]["types"] and again.result.size == out["size"]
    assert main(["quantize", str(model), "--json"]) == 2
    assert "either -q TYPES or a target" in json.loads(capsys.readouterr().out)["error"]["message"]
    with pytest.raises(QuantizeError, match="too small"):
        search(model, standard.size // 3, tmp_path / "small.gguf", quiet=True)


def test_a_quantized_input_is_refused_before_any_work(
    hybrid_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    quantized = hybrid_gguf("qwen35", quant="q4_0")
    with pytest.raises(RequantizeRefusedError, match="already quantized.*F16/BF16 original"):
        search(quantized, 10**9, tmp_path / "mix.gguf", quiet=True)
    assert not quantized.with_name(quantized.name.removesuffix(".gguf") + ".imatrix.gguf").exists()


@pytest.mark.slow
def test_a_bf16_model_is_measured_like_its_f32_original(
    hybrid_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    """BF16 rows are bytes in gguf-py's view; the measurement reads them as weights all the same."""
    f32 = hybrid_gguf("qwen35")
    bf16 = quantize(f32, "bf16", tmp_path / "bf16.gguf", quiet=True).path
    (a, _), (b, _) = quant_mix.measure(f32, {}), quant_mix.measure(bf16, {})
    first, second = {s.name: s for s in a}, {s.name: s for s in b}
    assert first.keys() == second.keys()
    for name, x in first.items():
        y = second[name]
        assert x.n_params == y.n_params and [o.type for o in x.options] == [o.type for o in y.options]
        q4 = [(o.error, p.error) for o, p in zip(x.options, y.options, strict=True) if o.type == QT.Q4_0]
        assert all(
            abs(e - f) <= 0.2 * e + 1e-9 for e, f in q4
        )  # the same rounding error, give or take BF16's
