"""Lazy public names for lowtf's packages (PEP 562 module ``__getattr__``).

``import lowtf`` imports no TensorFlow: a name is imported on its first use.
So the binaries can check their flags, and ``lowtf.job.JobConfig`` a whole
job's settings, in a fraction of a second, before TensorFlow's import (some 4
s) and its start-up lines. The ``lazy_loader`` package does the same; these
twenty lines are not worth a dependency.
"""

from __future__ import annotations

import importlib


def attach(package: str, exports: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for ``package``'s lazy names.

    Args:
      package: the package's ``__name__``.
      exports: public name -> ``"module"`` or ``"module:attribute"`` (module
        relative to ``package`` when it starts with a dot). Any submodule of
        ``package`` is found too (``lowtf.models``), as an eager import of it
        would have made it an attribute.
    """

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = exports.get(name, f".{name}")
        module_name, _, attribute = target.partition(":")
        try:
            value = importlib.import_module(module_name, package)
        except ModuleNotFoundError as error:
            if name in exports or error.name != f"{package}.{name}":
                raise  # a real import error inside the module
            raise AttributeError(
                f"module {package!r} has no attribute {name!r}"
            ) from None
        if attribute:
            value = getattr(value, attribute)
        # Cached as a plain attribute: __getattr__ runs once per name.
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__():
        module = importlib.import_module(package)
        return sorted(set(vars(module)) | set(exports))

    return __getattr__, __dir__
