"""Builds the optional compiled kernels; all metadata lives in pyproject.toml.

- `kernels._cpu`: matrix products straight from quantized GGUF blocks, thread pool, dequantization;
- `kernels._fused`: the fused decode-step ops (Gated DeltaNet update, gated attention, norms).

Both are optional: when they cannot be built, `pip install -e .` still succeeds and the daemon
falls back to the numpy backend. No -march=native: each SIMD variant carries its own target
attribute and is chosen at import from what the CPU reports.
"""

from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kernels._cpu",
            sources=sorted(glob("kernels/csrc/*.c")),
            depends=sorted(glob("kernels/csrc/*.h")),
            optional=True,
            extra_compile_args=["-O3", "-std=c11", "-pthread", "-ffp-contract=off", "-fno-math-errno",
                                "-Wall", "-Wextra", "-Wno-unused-function"],
            extra_link_args=["-pthread"],
        ),
        Extension(
            "kernels._fused",
            sources=sorted(glob("kernels/csrc_fused/*.c")),
            depends=sorted(glob("kernels/csrc_fused/*.h")),
            optional=True,
            extra_compile_args=["-O3", "-std=c11", "-fno-trapping-math"],  # lets loops with float compares vectorise
        ),
    ],
)
