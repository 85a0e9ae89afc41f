"""Builds the optional compiled kernels (kernels._cpu); all metadata lives in pyproject.toml.

The extension is optional: when it cannot be built, `pip install -e .` still succeeds and the
daemon falls back to the numpy backend. No -march=native: each SIMD variant carries its own
target attribute and is chosen at import from what the CPU reports.
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
        )
    ],
)
