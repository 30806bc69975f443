"""Where the server's data files are: ``static/`` (served under ``/static/``, the admin
page) and ``config/renum-rt.toml`` (every setting with its default).

The repository keeps both directories at its top level, beside the package, and a wheel
cannot install directories beside a package in site-packages. So ``setup.cfg`` maps them
onto ``renum_rt/_static`` and ``renum_rt/_config`` as package data, and this module looks
for them through ``importlib.resources``:

- installed from a wheel (``pip install renum-rt``): ``renum_rt/_static``, ``renum_rt/_config``;
- from the source tree (``pip install -e .``, or ``python server.py`` in a checkout with no
  install): the package has no ``_static`` (setuptools' editable finder does not map a
  directory without ``__init__.py`` into a package), so the top-level directories beside
  the package are used.

The package must be files on disk, not in a zip: Tornado serves static files from a directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def static_dir() -> Path:
    """The directory served under ``/static/`` (``admin.html``, the browser library)."""
    return _data_dir("static")


def default_config() -> Path:
    """``renum-rt.toml``, read when no ``--config`` is given."""
    return _data_dir("config") / "renum-rt.toml"


def _data_dir(name: str) -> Path:
    """``renum_rt/_<name>`` when installed from a wheel, else ``<name>/`` of the source tree."""
    package = files("renum_rt")
    if isinstance(package, Path):
        installed = package.resolve() / f"_{name}"
        return installed if installed.is_dir() else installed.parent.parent / name
    raise RuntimeError(f"renum_rt must be installed as files on disk, not in {package}")
