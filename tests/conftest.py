import os
import platform


def _pin_cpu_kernels() -> None:
    """Numeric snapshots (tests/test_universality_memory.py) hash a comparison's
    numbers, which float32 kernels round differently on different CPUs (torch
    and MKL pick AVX-512 code where they can: other bits than on an AVX2
    machine). On x86-64 with AVX2, every library is held to its AVX2 code
    (torch's ATen kernels, MKL in its conditional-reproducibility mode,
    oneDNN, OpenBLAS), so that every such machine runs the same code paths.
    Set before torch is imported; a variable already set is left alone."""
    try:
        with open("/proc/cpuinfo") as f:
            avx2 = " avx2" in f.read()
    except OSError:
        return
    if platform.machine() != "x86_64" or not avx2:
        return
    for name, value in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"),
                        ("OPENBLAS_CORETYPE", "Haswell")):
        os.environ.setdefault(name, value)


_pin_cpu_kernels()

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests never reach a hub: everything they load, they build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

# tiny models: one thread is faster than two (no sync overhead) and predictable under load
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
