"""Build the compiled core: every ``cpbench/_core/*.pyx`` becomes one extension module.

Metadata lives in pyproject.toml; this file only describes the Cython extensions, which need
NumPy's headers and its static random library (``libnpyrandom``) for the BitGenerator C API.
"""
from __future__ import annotations

import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

NUMPY_INCLUDE = np.get_include()
NPYRANDOM_LIB = os.path.join(os.path.dirname(np.__file__), "random", "lib")


def core_extensions() -> list[Extension]:
    extensions = []
    for pyx in sorted(glob.glob(os.path.join("cpbench", "_core", "*.pyx"))):
        name = pyx[:-4].replace(os.sep, ".")
        extensions.append(
            Extension(
                name,
                [pyx],
                include_dirs=[NUMPY_INCLUDE],
                library_dirs=[NPYRANDOM_LIB],
                libraries=["npyrandom", "m"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"],
            )
        )
    return extensions


setup(
    ext_modules=cythonize(
        core_extensions(),
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
