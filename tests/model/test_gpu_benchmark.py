"""benchmarks/gpu.py: the "no CUDA" exit and its CPU dry run (every phase's code path)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_no_cuda_exits_with_a_clear_message():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert res.returncode == _module().EXIT_NO_CUDA == 2
    assert res.stdout.startswith("no CUDA")
    assert "--dry-run" in res.stdout
    assert "Traceback" not in res.stderr


def test_table_marks_failed_phases():
    mod = _module()
    rows = [
        mod.Row("train fp32", steps=3, s_per_step=0.5, images_per_s=10.0, peak_gib=1.5),
        mod.Row("data 4 workers", steps=2, s_per_step=1.0, wait=0.25),
        mod.Row("infer ours", error="RuntimeError: boom"),
    ]
    lines = mod.format_table(rows).splitlines()
    assert len(lines) == 4
    assert "10.0" in lines[1] and "1.50" in lines[1]
    assert "25 %" in lines[2]
    assert "FAILED: RuntimeError: boom" in lines[3]


@pytest.mark.slow
def test_dry_run_runs_every_phase_on_cpu(capsys, monkeypatch):
    """--dry-run goes through training variants, the data path and inference; a phase
    that fails is reported and the others still run."""
    mod = _module()
    real = mod.data_phase

    def failing_for_zero_workers(*a, **kw):
        if a[4] == 0:  # workers
            raise RuntimeError("simulated loader failure")
        return real(*a, **kw)

    monkeypatch.setattr(mod, "data_phase", failing_for_zero_workers)
    rc = mod.main(["--dry-run", "--workers", "0", "2", "--threads", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    table = out[out.index("phase ") :].splitlines()
    by_phase = {line[:34].strip(): line for line in table[1:] if line.strip()}
    for name in ("train fp32", "train fp32 channels_last", "train bf16", "data 2 workers (fp32)"):
        assert name in by_phase, (name, out)
        assert "FAILED" not in by_phase[name]
        assert by_phase[name].split()[len(name.split())] == "2"  # 2 timed steps
    assert "simulated loader failure" in by_phase["data 0 workers"]
    infer = [line for name, line in by_phase.items() if name.startswith("infer")]
    assert len(infer) == 3 and not any("FAILED" in line for line in infer)
    assert any("torchvision default" in line for line in infer)
