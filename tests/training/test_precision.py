import keras
import pytest

from imgclf.training.precision import auto_precision, compute_precision, resolve_precision


@pytest.mark.parametrize("gpus,flags,vendor,expected", [
    ([], {"avx2", "avx512f", "avx512_bf16"}, "AuthenticAMD", "bfloat16"),  # Zen 4
    ([], {"avx2", "avx512_bf16", "amx_bf16"}, "GenuineIntel", "bfloat16"),  # Sapphire Rapids with AMX
    ([], {"avx2", "avx512f", "avx512_bf16"}, "GenuineIntel", "float32"),  # its AMX hidden: bfloat16 is slower
    ([], {"avx2", "avx512f"}, "AuthenticAMD", "float32"),
    ([{"compute_capability": (8, 0)}], set(), "", "bfloat16"),
    ([{"compute_capability": (9, 0)}], set(), "", "bfloat16"),
    ([{"compute_capability": (7, 5)}], {"avx512_bf16"}, "AuthenticAMD", "float16"),
])
def test_auto_precision_follows_the_hardware(gpus, flags, vendor, expected):
    assert auto_precision(gpus=gpus, flags=flags, vendor=vendor) == expected


def test_forced_precision_is_kept():
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("float16") == "float16"
    assert resolve_precision("auto") in ("float32", "bfloat16", "float16")


def test_policy_is_set_inside_and_restored_after():
    before = keras.mixed_precision.global_policy().name
    with compute_precision("bfloat16"):
        layer = keras.layers.Dense(2)
        assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == before
