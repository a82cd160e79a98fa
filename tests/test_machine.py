"""codexlm.machine: the machine line benchmarks and locks carry."""

from __future__ import annotations

import pytest
import torch

from codexlm import machine


def test_the_line_names_the_isa_and_whether_bf16_is_native(monkeypatch) -> None:
    monkeypatch.setattr(
        machine, "cpuinfo", lambda: {"model name": "Some CPU", "flags": "avx2 amx_bf16"}
    )
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    m = machine.describe()
    assert m["cpu"] == "Some CPU" and m["native_bf16"] is True
    assert m["capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"{m['capability']}, native bf16, {torch.get_num_threads()} threads" in machine.line(m)


@pytest.mark.parametrize(
    ("isa", "native"), [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_AMX", True)]
)
def test_onednn_limited_below_bf16_is_no_native_bf16(monkeypatch, isa: str, native: bool) -> None:
    """The AVX2 stand-in (ONEDNN_MAX_CPU_ISA=AVX2) emulates bf16 whatever the CPU has."""
    monkeypatch.setattr(machine, "cpuinfo", lambda: {"flags": "avx512_bf16 amx_bf16"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    m = machine.describe()
    assert m["native_bf16"] is native and m["env"]["ONEDNN_MAX_CPU_ISA"] == isa
    assert (" no native bf16" in machine.line(m)) is not native


def test_the_real_cpuinfo_is_read_once_into_fields() -> None:
    info = machine.cpuinfo()
    assert info == {} or "flags" in info  # Linux: the first processor's fields
