"""A LoRA adapter served as ``BASE:NAME``: listed in /v1/models, and a request naming it gets the
adapter's answer (the same as the Python API's ``adapter=``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverutil import MODEL, chat_body, running_server

from edge_qwen.convert.lora import convert_lora
from edge_qwen.runtime import Model
from edge_qwen.server import ServerConfig, StaticProvider

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_tiny_adapters import config_from_gguf, make_adapter  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(real_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Model]]:
    root = tmp_path_factory.mktemp("served-lora")
    (root / "shapes").mkdir()
    (root / "shapes" / "config.json").write_text(json.dumps(config_from_gguf(real_gguf)))
    peft = make_adapter(root / "peft", root / "shapes", seed=3, r=4, lora_alpha=8, target_modules=["q_proj"])
    lora = convert_lora(peft, root / "out", base=real_gguf, outtype="f16").gguf
    model = Model.load(real_gguf, n_ctx=512, n_threads=1, adapters={"sql": lora})
    provider = StaticProvider({MODEL: model}, routes={f"{MODEL}:sql": (MODEL, {"sql": 1.0})})
    with running_server(provider, ServerConfig()) as url:
        yield url, model
    provider.close()


def test_adapters_are_listed_as_base_colon_name(served: tuple[str, Model]) -> None:
    url, _ = served
    ids = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
    assert ids == [MODEL, f"{MODEL}:sql"]


def test_a_request_for_base_colon_name_uses_the_adapter(served: tuple[str, Model]) -> None:
    url, model = served
    body = chat_body("Write a haiku about rivers.", max_tokens=8)
    chat = url + "/v1/chat/completions"
    tuned = httpx.post(chat, json={**body, "model": f"{MODEL}:sql"}, timeout=120).json()
    base = httpx.post(chat, json=body, timeout=120).json()
    messages = body["messages"]
    expected = model.chat(messages, temperature=0, max_tokens=8, adapter="sql").text  # type: ignore[arg-type]
    assert tuned["choices"][0]["message"]["content"] == expected
    assert tuned["model"] == f"{MODEL}:sql"
    assert base["choices"][0]["message"]["content"] != expected
