"""The package's data files (edge_qwen/data/: models.yaml, devices.yaml, presets, calibration text)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


def data_path(name: str) -> Path:
    return DATA_DIR / name


def read_data(name: str) -> str:
    return data_path(name).read_text(encoding="utf-8")
