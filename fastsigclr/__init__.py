"""fastsigclr: fast sigmoid contrastive self-supervised learning."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# Installed, fastsigclr.kernels is a subpackage. Imported straight from a source checkout (no
# install: e.g. a machine whose setuptools cannot build the project), it is <checkout>/kernels;
# the checkout root then joins this package's search path, never sys.path, so a top-level
# `kernels` module still does not exist.
_here = _Path(__file__).resolve().parent
_checkout = (_here.parent / "pyproject.toml").is_file() and (
    _here.parent / "kernels" / "__init__.py"
).is_file()
if _checkout and not (_here / "kernels").is_dir():
    __path__.append(str(_here.parent))
