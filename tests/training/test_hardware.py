from imgclf.training import hardware

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
flags\t\t: fpu avx2 avx512f avx512_bf16

processor\t: 1
model name\t: Example CPU 9000
flags\t\t: fpu avx2 avx512f avx512_bf16
"""


def test_cpu_name_and_flags_come_from_cpuinfo(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "cpuinfo")
    hardware._cpuinfo.cache_clear()
    try:
        assert hardware.cpu_name() == "Example CPU 9000"
        assert hardware.cpu_flags() == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    finally:
        hardware._cpuinfo.cache_clear()


def test_no_cpuinfo_means_no_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "missing")
    hardware._cpuinfo.cache_clear()
    try:
        assert hardware.cpu_flags() == set() and hardware.cpu_name()
    finally:
        hardware._cpuinfo.cache_clear()


def test_environment_records_versions_and_hardware():
    env = hardware.environment(seed=7)
    assert env["seed"] == 7 and env["tensorflow"].startswith("2.21") and env["cpu_count"] >= 1
    assert env["cpu"] == hardware.cpu_name() and isinstance(env["gpus"], list)
