"""PEP 517 build backend: setuptools, once torch is known to be importable.

mdlm_fast compiles its C++/CUDA operators against the torch it will run with, so the build must
see the environment's torch. pip's default build isolation hides it; listing torch as a build
requirement instead made pip install the newest torch (on Linux the CUDA build, ~20 nvidia-*
wheels, several GB) into the build environment and compile against a torch the user does not run.
So the build requires nothing, and this backend stops at once with one line when torch is absent,
before anything is downloaded.
"""

import sys

HINT = (
    "mdlm_fast compiles against the torch it will run with, and this build environment has none "
    "(pip's build isolation hides an installed torch): install torch first, then "
    "`pip install --no-build-isolation <path to mdlm_fast>`"
)


def _stop(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


try:
    import torch  # noqa: F401
except ImportError:
    _stop(HINT)

try:
    from setuptools import __version__ as _setuptools_version
    from setuptools import build_meta as _setuptools  # noqa: F401  (present, or stop with a hint)
except ImportError:
    _stop(
        "mdlm_fast builds with setuptools 77 or later, and this environment has none: "
        "`pip install 'setuptools>=77'`, then `pip install --no-build-isolation <path to mdlm_fast>`"
    )
if int(_setuptools_version.split(".")[0]) < 77:
    _stop(
        f"mdlm_fast builds with setuptools 77 or later (its license metadata), this environment has "
        f"{_setuptools_version}: `pip install 'setuptools>=77'`"
    )

from setuptools.build_meta import *  # noqa: E402,F401,F403  (every PEP 517/660 hook)
