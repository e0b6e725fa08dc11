"""``python -m benchmarks.gpu``: the one GPU benchmark command, checked on the CPU.

``--device cpu`` runs the same code at tiny sizes (a few seconds) into a copy of RESULTS.md:
the marked section is written, replaced (not duplicated) on a second run (in this process,
through the same ``main``), and the rest of the file is left byte for byte. Without a CUDA
device (forced with CUDA_VISIBLE_DEVICES="") the command fails with one line and a non-zero
status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import device_peaks, gpu

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _outside(text: str) -> tuple[str, str]:
    """The file before its begin marker and after its end marker."""
    assert text.count(gpu.BEGIN) == 1 and text.count(gpu.END) == 1, text[-2000:]
    return text.split(gpu.BEGIN)[0], text.split(gpu.END)[1]


def test_cpu_run_writes_and_replaces_the_marked_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    shutil.copy(gpu.RESULTS_MD, results)
    original = results.read_text()
    assert gpu.BEGIN in original, "benchmarks/RESULTS.md should carry the GPU section's markers"
    before, after = _outside(original)

    first = _run("--device", "cpu", "--results", str(results), "--json", str(tmp_path / "g.json"))
    assert first.returncode == 0, first.stderr[-3000:]
    text = results.read_text()
    assert _outside(text) == (before, after)  # the rest of the file untouched
    section = text.split(gpu.BEGIN)[1].split(gpu.END)[0]
    assert "**Device: CPU**" in section
    assert "### Fused GRPO loss, forward + backward" in section
    assert "| 64 × 128 | bfloat16 | fused |" in section
    assert "### Fused linear log-probs" in section
    assert "| fused |" in section and "failed" not in section.lower()
    assert "### Long answers: one update, padded vs packed" in section
    assert "| packed |" in section and "| before |" in section
    assert "### Generation beside the update: the pipeline's efficiency" in section
    assert "| staleness 1 (s/step) |" in section
    assert (tmp_path / "g.json").stat().st_size > 0

    # the second run in this process (the same main(); saves a torch import)
    assert gpu.main(["--device", "cpu", "--results", str(results)]) == 0
    text2 = results.read_text()
    assert _outside(text2) == (before, after)  # replaced in place, not appended again
    assert text2.count("### Fused GRPO loss, forward + backward") == 1


def test_no_cuda_device_is_one_line_and_nonzero(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("untouched\n")
    res = _run("--results", str(results), env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("benchmarks.gpu: no CUDA device")
    assert "--device cpu" in lines[0]
    assert res.stdout == ""
    assert results.read_text() == "untouched\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# R\n\nintro\n", f"# R\n\nintro\n\n{gpu.HEADING}\n\n{gpu.BEGIN}\nnew\n{gpu.END}\n"),
        (f"a\n{gpu.BEGIN}\nold\n{gpu.END}\nz\n", f"a\n{gpu.BEGIN}\nnew\n{gpu.END}\nz\n"),
        (f"a\n{gpu.BEGIN}{gpu.END}z", f"a\n{gpu.BEGIN}\nnew\n{gpu.END}z"),
    ],
)
def test_replace_section(text: str, expected: str) -> None:
    assert gpu.replace_section(text, "new\n") == expected
    assert gpu.replace_section(expected, "new") == expected  # idempotent


def test_replace_section_refuses_unbalanced_markers() -> None:
    with pytest.raises(ValueError, match="expected one"):
        gpu.replace_section(f"{gpu.END}\n{gpu.BEGIN}\n", "x")
    with pytest.raises(ValueError, match="expected one"):
        gpu.replace_section(f"{gpu.BEGIN}\n", "x")


def test_hbm_peak_table_picks_the_specific_name_first() -> None:
    assert device_peaks.hbm_peak_gbs("NVIDIA H200") == ("H200", 4800.0)
    assert device_peaks.hbm_peak_gbs("NVIDIA GH200 480GB") == ("GH200", 4000.0)
    assert device_peaks.hbm_peak_gbs("NVIDIA H100 PCIe") == ("H100 PCIe", 2000.0)
    assert device_peaks.hbm_peak_gbs("NVIDIA H100 80GB HBM3") == ("H100", 3350.0)
    assert device_peaks.hbm_peak_gbs("NVIDIA A100-SXM4-80GB") == ("A100-SXM4-80GB", 2039.0)
    assert device_peaks.hbm_peak_gbs("NVIDIA A100-PCIE-40GB") == ("A100", 1555.0)
    assert device_peaks.hbm_peak_gbs("NVIDIA A10G") == ("A10", 600.0)
    assert device_peaks.hbm_peak_gbs("NVIDIA L40S") == ("L40S", 864.0)
    assert device_peaks.hbm_peak_gbs("NVIDIA L4") == ("L4", 300.0)
    assert device_peaks.hbm_peak_gbs("Tesla T4") == ("T4", 320.0)
    assert device_peaks.hbm_peak_gbs("Some Future GPU") is None
