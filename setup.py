"""Build the Cython extensions (every metaq_core/*.pyx and metaq_server/*.pyx, linked with zlib)."""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# METAQ_CYTHON_DEBUG=1 builds with bounds checks and assertions on (used by tests when wanted).
DEBUG = os.environ.get("METAQ_CYTHON_DEBUG") == "1"

extensions = [
    Extension(
        os.path.dirname(path) + "." + os.path.splitext(os.path.basename(path))[0],
        [path],
        libraries=["z"],
        extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
    )
    for path in sorted(glob.glob("metaq_core/*.pyx") + glob.glob("metaq_server/*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "initializedcheck": DEBUG,
            "cdivision": True,
        },
    ),
)
