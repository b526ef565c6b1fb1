"""``edge-qwen doctor``: the suggestion rules on fake facts, GPU discovery on a fake sysfs, one real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_qwen import cli, doctor
from edge_qwen.doctor import Facts, advise


def _texts(facts: Facts) -> list[str]:
    return [s.text for s in advise(facts)[1]]


def test_a_healthy_cpu_machine_gets_a_plain_verdict() -> None:
    verdict, suggestions = advise(Facts())
    assert verdict == "ready: llama.cpp on CPU" and suggestions == []


def test_an_nvidia_gpu_with_a_cpu_only_build() -> None:
    (text,) = _texts(Facts(hardware_gpus=("nvidia",), nvcc=True))
    assert text.startswith("an NVIDIA GPU is present but this build is CPU-only: reinstall with")
    assert "EDGE_QWEN_BACKEND=cuda bash scripts/setup.sh" in text and "toolkit" not in text
    (text,) = _texts(Facts(hardware_gpus=("nvidia",), nvcc=False))
    assert "install the CUDA toolkit first" in text
    verdict, _ = advise(Facts(hardware_gpus=("nvidia",)))
    assert "1 thing(s) to fix" in verdict


def test_a_working_gpu_build_names_its_device() -> None:
    facts = Facts(hardware_gpus=("nvidia",), backends=("CUDA", "CPU"), gpu_devices=("NVIDIA RTX 4090",))
    assert advise(facts) == ("ready: llama.cpp on NVIDIA RTX 4090", [])


def test_amd_or_intel_gpus_point_at_vulkan() -> None:
    (text,) = _texts(Facts(hardware_gpus=("amd",)))
    assert "AMD GPU is present" in text and "EDGE_QWEN_BACKEND=vulkan" in text
    assert "check_backend.sh vulkan --check-only" in text
    assert (
        _texts(Facts(hardware_gpus=("intel",), backends=("Vulkan", "CPU"), gpu_devices=("Intel Arc",))) == []
    )


def test_a_gpu_build_that_sees_no_device() -> None:
    (text,) = _texts(Facts(backends=("Vulkan", "CPU")))
    assert "this build has Vulkan but found no GPU device" in text and "GGML_VK_VISIBLE_DEVICES=0" in text
    (cuda,) = _texts(Facts(backends=("CUDA", "CPU")))
    assert "found no GPU device" in cuda and "GGML_VK" not in cuda


def test_apple_silicon_wants_metal() -> None:
    (text,) = _texts(Facts(system="Darwin", machine="arm64"))
    assert "EDGE_QWEN_BACKEND=metal" in text
    assert (
        _texts(Facts(system="Darwin", machine="arm64", backends=("MTL", "CPU"), gpu_devices=("Apple M3",)))
        == []
    )


def test_gcc12_on_an_amx_cpu() -> None:
    facts = Facts(cpu_amx=True, build_amx=True, build_compiler=("gcc", 12), extra_buffers=False)
    (text,) = _texts(facts)
    assert text.startswith("GCC 12 on an AMX CPU") and "-mno-amx-int8" in text
    (forced,) = _texts(Facts(cpu_amx=True, build_amx=True, build_compiler=("gcc", 12), extra_buffers=True))
    assert "may crash" in forced
    assert _texts(Facts(cpu_amx=True, build_amx=True, build_compiler=("gcc", 13))) == []
    (info,) = advise(Facts(cpu_amx=True, build_amx=False, build_compiler=("gcc", 12)))[1]
    assert info.level == "info" and "does not use it" in info.text


def test_memory_models_and_the_hub() -> None:
    (low,) = _texts(Facts(available_bytes=700 * 2**20, memory_source="cgroup v2 /app"))
    assert "only 700 MiB available (cgroup v2 /app)" in low
    (pull,) = _texts(Facts(cached_models=0))
    assert "edge-qwen pull qwen2.5-coder-0.5b-instruct" in pull
    (hub,) = advise(Facts(hub="unreachable"))[1]
    assert hub.level == "info" and "fine offline" in hub.text
    assert advise(Facts(hub="offline (by setting)"))[1] == []


def test_a_build_that_does_not_load() -> None:
    verdict, (fix,) = advise(Facts(llama_error="OSError: libllama.so: cannot open"))
    assert verdict.startswith("not ready: llama.cpp could not be loaded") and "setup.sh" in fix.text


def _pci(root: Path, slot: str, cls: str, vendor: str) -> None:
    dev = root / "sys/bus/pci/devices" / slot
    dev.mkdir(parents=True)
    (dev / "class").write_text(cls + "\n")
    (dev / "vendor").write_text(vendor + "\n")


def test_gpus_are_found_on_the_pci_bus(tmp_path: Path) -> None:
    assert doctor.hardware_gpus(tmp_path) == ()
    _pci(tmp_path, "0000:00:02.0", "0x030000", "0x8086")  # Intel iGPU
    _pci(tmp_path, "0000:01:00.0", "0x030200", "0x10de")  # NVIDIA 3D controller
    _pci(tmp_path, "0000:02:00.0", "0x020000", "0x1002")  # an AMD network card is not a GPU
    _pci(tmp_path, "0000:00:01.0", "0x030000", "0x1234")  # QEMU's display: unknown vendor
    assert doctor.hardware_gpus(tmp_path) == ("intel", "nvidia")


def test_the_hub_check_honours_offline_settings() -> None:
    assert doctor.hub_status() == "offline (by setting)"  # conftest sets HF_HUB_OFFLINE=1


@pytest.mark.real
def test_doctor_runs_for_real(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "--json", "--offline"]) == 0
    report = json.loads(capsys.readouterr().out)
    build = report["llama_cpp"]
    assert "CPU" in build["backends"] and any(d["type"] == "cpu" for d in build["devices"])
    assert build["system_info"].startswith("CPU : ")
    assert report["cpu"]["physical_cores"] >= 1 and report["memory"]["total_bytes"] > 0
    assert report["versions"]["llama_cpp_python"] == build["llama_cpp_python"]
    assert report["weights"]["amx_in_build"] == build["has_amx"]
    assert report["hub"] == "not checked" and report["verdict"].startswith(("ready", "not ready"))
    assert cli.main(["doctor", "--offline"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("llama.cpp: llama-cpp-python") and report["verdict"] in text


def test_a_library_that_fails_to_load_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_qwen import backends

    def broken() -> None:
        raise OSError("libggml-cuda.so: cannot open shared object file")

    monkeypatch.setattr(backends, "build_info", broken)
    report = doctor.gather(check_hub=False)
    assert report["llama_cpp"] == {"load_error": "OSError: libggml-cuda.so: cannot open shared object file"}
    assert report["verdict"].startswith("not ready") and report["cpu"]["physical_cores"] >= 1
    assert doctor.format_report(report).startswith("llama.cpp: cannot load (OSError: libggml-cuda.so")
