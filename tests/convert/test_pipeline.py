"""``convert -q``: the F16 file, its quantized children, manifests and the quality report."""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from edge_qwen import cli


def test_convert_quantizes_and_reports_quality(tiny_checkpoint, tmp_path: Path, capsys) -> None:
    src = tiny_checkpoint("qwen3")
    code = cli.main(["convert", str(src), "-o", str(tmp_path), "-q", "q8_0,q4_0", "--threads", "2", "--json"])
    report = json.loads(capsys.readouterr().out)

    assert code == 0
    assert [o["quant_type"] for o in report["outputs"]] == ["F16", "Q8_0", "Q4_0"]
    f16, q8, q4 = report["outputs"]
    assert f16["quality"] is None and f16["path"] == str(Path(report["gguf"]).resolve())
    # Quantized files really hold the requested type, and each carries its quality figures.
    types = {t.tensor_type for t in gguf.GGUFReader(q8["path"]).tensors}
    assert gguf.GGMLQuantizationType.Q8_0 in types
    assert q8["quality"]["top1_pct"] > q4["quality"]["top1_pct"] - 5
    assert q8["quality"]["mean_kl"] < q4["quality"]["mean_kl"]
    assert 0 <= q8["quality"]["mean_kl"] < 0.05 and q8["quality"]["top1_pct"] > 80
    # Manifests beside every output say the same, with the file's real hash and size.
    for out in report["outputs"]:
        manifest = json.loads(Path(out["path"] + ".json").read_text())
        assert manifest["sha256"] == out["sha256"] and manifest["size"] == Path(out["path"]).stat().st_size
        assert manifest["source"]["path"] == str(src)
    # Nothing half-written is left in the folder.
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".incomplete")]


def test_human_output_prints_the_quality_table(tiny_checkpoint, tmp_path: Path, capsys) -> None:
    src = tiny_checkpoint("qwen2")
    assert cli.main(["convert", str(src), "-o", str(tmp_path), "-q", "q8_0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "F16" in out and "Q8_0" in out and "top-1 %" in out and "KL mean" in out
