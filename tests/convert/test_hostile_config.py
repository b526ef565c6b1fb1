"""A checkpoint whose config.json, safetensors header or index lies is refused at once.

Each refusal is one line naming the field and the problem; the CLI exits 2 with a JSON error
under ``--json``. Nothing is sized by the lie first: ``vocab_size: 1e12`` once padded the vocabulary
for a minute and 7 GB before anything looked at it.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_qwen import cli
from edge_qwen.convert import convert
from edge_qwen.errors import CheckpointError, SafetensorsError, ShapeMismatchError

Corruption = Callable[[Path], None]


def config(**changes: Any) -> Corruption:
    """config.json with ``changes`` set at the top level."""

    def corrupt(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **changes}))

    return corrupt


def config_text(text: str) -> Corruption:
    """config.json replaced by ``text``."""
    return lambda folder: (folder / "config.json").write_text(text)


def header(edit: Callable[[dict[str, Any]], Any]) -> Corruption:
    """The first safetensors file's header replaced by ``edit(header)``; the data stays as it was."""

    def corrupt(folder: Path) -> None:
        weights = sorted(folder.glob("*.safetensors"))[0]
        data = weights.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        raw = json.dumps(edit(json.loads(data[8 : 8 + n]))).encode()
        weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])

    return corrupt


def first_tensor(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], Any]:
    """A header edit that applies ``change`` to the first tensor's entry."""

    def edit(h: dict[str, Any]) -> dict[str, Any]:
        change(h[next(k for k in h if k != "__metadata__")])
        return h

    return edit


def index(edit: Callable[[dict[str, Any]], Any]) -> Corruption:
    """model.safetensors.index.json replaced by ``edit(index)``."""

    def corrupt(folder: Path) -> None:
        path = folder / "model.safetensors.index.json"
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    return corrupt


@dataclass(frozen=True)
class Lie:
    """One hostile edit of a tiny Qwen2 checkpoint (vocab 151,936, hidden 64, 2 layers) and the
    refusal it must get: its class and a pattern of its message, the field and the problem."""

    corrupt: Corruption
    error: type[Exception]
    says: str
    shards: int = 1


LIES: dict[str, Lie] = {
    # the reported cases
    "vocab_size 1e12": Lie(
        config(vocab_size=1e12), CheckpointError, r"vocab_size is 1000000000000\.0; it must be a whole number"
    ),
    "num_hidden_layers 1e6": Lie(
        config(num_hidden_layers=1e6), CheckpointError, r"num_hidden_layers is 1000000\.0; .* 1 to 1,024"
    ),
    "num_attention_heads 0": Lie(
        config(num_attention_heads=0), CheckpointError, r"num_attention_heads is 0; .* 1 to 1,024"
    ),
    "hidden_size '64x'": Lie(config(hidden_size="64x"), CheckpointError, r'hidden_size is "64x"; it must be'),
    "config.json a JSON list": Lie(
        config_text("[1, 2]"), CheckpointError, r"config\.json: holds a JSON list"
    ),
    "max_position_embeddings 2**40": Lie(
        config(max_position_embeddings=2**40),
        CheckpointError,
        r"max_position_embeddings is 1099511627776; .* 1 to 16,777,216",
    ),
    "safetensors header a JSON list": Lie(
        header(lambda h: list(h)), SafetensorsError, r"header is a JSON list, not an object"
    ),
    "index without weight_map": Lie(
        index(lambda i: {"metadata": i["metadata"]}), CheckpointError, r"index\.json: no weight_map", shards=2
    ),
    # the same kinds of lie, elsewhere
    "vocab_size 10**12 as an integer": Lie(
        config(vocab_size=10**12), CheckpointError, r"vocab_size is 1000000000000; .* 1 to 1,048,576"
    ),
    "num_attention_heads true": Lie(
        config(num_attention_heads=True), CheckpointError, r"num_attention_heads is true; it must be a whole"
    ),
    "rope_theta NaN": Lie(config(rope_theta=float("nan")), CheckpointError, r"rope_theta is NaN; it must be"),
    "tie_word_embeddings 'false'": Lie(
        config(tie_word_embeddings="false"),
        CheckpointError,
        r'tie_word_embeddings is "false"; .* true or false',
    ),
    "rope_scaling a list": Lie(
        config(rope_scaling=[4]), CheckpointError, r"rope_scaling is \[4\]; .* object"
    ),
    "config.json not JSON": Lie(
        config_text('{"vocab_size": '), CheckpointError, r"config\.json: not valid JSON"
    ),
    # nested configs (Qwen-VL / Qwen3.5 text_config, vision_config) get the same bounds
    "text_config.vocab_size 1e12": Lie(
        config(text_config={"vocab_size": 1e12}),
        CheckpointError,
        r"text_config\.vocab_size is 1000000000000\.0",
    ),
    "text_config.rope_parameters.rope_theta '1e6'": Lie(
        config(text_config={"rope_parameters": {"rope_theta": "1e6"}}),
        CheckpointError,
        r'text_config\.rope_parameters\.rope_theta is "1e6"',
    ),
    "vision_config.depth 10**6": Lie(
        config(vision_config={"depth": 10**6}), CheckpointError, r"vision_config\.depth is 1000000; .* 1,024"
    ),
    # plausible numbers that the weights contradict
    "vocab_size 200,000 but 151,936 embedding rows": Lie(
        config(vocab_size=200_000),
        ShapeMismatchError,
        r"vocab_size 200,000 .* model\.embed_tokens\.weight is 151,936 × 64",
    ),
    "num_hidden_layers 1,000 but 2 in the weights": Lie(
        config(num_hidden_layers=1000),
        CheckpointError,
        r"num_hidden_layers is 1,000 but the checkpoint holds layers 0 to 1",
    ),
    # safetensors headers and the index
    "header entry without dtype": Lie(
        header(first_tensor(lambda t: t.pop("dtype"))), SafetensorsError, r"has dtype None"
    ),
    "header entry without shape": Lie(
        header(first_tensor(lambda t: t.pop("shape"))),
        SafetensorsError,
        r"has shape None and data_offsets \[",
    ),
    "header entry a number": Lie(
        header(lambda h: {**h, "model.norm.weight": 7}),
        SafetensorsError,
        r"'model\.norm\.weight' has header entry '7'",
    ),
    "header offsets beyond the file": Lie(
        header(first_tensor(lambda t: t.update(data_offsets=[10**12, 10**12 + 128]))),
        SafetensorsError,
        r"ends at byte 1000000000128 of the data section",
    ),
    "index a JSON list": Lie(
        index(lambda i: [i]), CheckpointError, r"index\.json: holds a JSON list", shards=2
    ),
    "index naming a shard outside the folder": Lie(
        index(lambda i: {**i, "weight_map": {k: "../../etc/passwd" for k in i["weight_map"]}}),
        CheckpointError,
        r"shard '\.\./\.\./etc/passwd', which is not a file inside the checkpoint folder",
        shards=2,
    ),
}


@pytest.fixture
def lied(request: pytest.FixtureRequest, tiny_checkpoint, tmp_path: Path) -> tuple[Path, Lie]:
    """A private copy of the tiny checkpoint with the lie named by the test's parameter applied."""
    lie = LIES[request.param]
    folder = Path(
        shutil.copytree(tiny_checkpoint("qwen2", dtype="f16", shards=lie.shards), tmp_path / "ckpt")
    )
    lie.corrupt(folder)
    return folder, lie


@pytest.mark.parametrize("lied", list(LIES), indirect=True)
def test_convert_refuses_at_once(lied: tuple[Path, Lie], tmp_path: Path) -> None:
    folder, lie = lied
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(lie.error, match=lie.says) as refused:
            convert(folder, tmp_path / "out", evaluate=False, quiet=True)
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert "\n" not in str(refused.value), "one line"
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert peak < 64 * 2**20, f"allocated {peak / 2**20:.0f} MiB before refusing"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("lied", list(LIES), indirect=True)
def test_cli_reports_one_json_error_and_exits_2(lied: tuple[Path, Lie], tmp_path: Path, capsys) -> None:
    folder, lie = lied
    code = cli.main(["convert", str(folder), "-o", str(tmp_path / "out"), "--no-eval", "--quiet", "--json"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err
    (line,) = out.splitlines()
    error = json.loads(line)["error"]
    assert error["type"] == lie.error.__name__
    assert re.search(lie.says, error["message"])
