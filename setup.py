"""Compiled kernels: `kernels._fused` (the fused decode-step ops). Optional: if it cannot be built,
the package still installs and the numpy backend is used."""

from setuptools import Extension, setup

FUSED_SOURCES = [f"kernels/csrc_fused/{name}.c" for name in ("module", "ops_generic", "ops_avx2")]

setup(
    ext_modules=[
        Extension(
            "kernels._fused",
            sources=FUSED_SOURCES,
            depends=["kernels/csrc_fused/fused.h", "kernels/csrc_fused/ops_impl.h"],
            extra_compile_args=["-O3", "-std=c11", "-fno-trapping-math"],  # lets loops with float compares vectorise
            optional=True,
        )
    ]
)
