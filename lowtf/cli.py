"""What every lowtf binary does first; the console scripts.

Each ``bin/`` script's first import is this module (``import lowtf.cli``),
before absl's flags and long before TensorFlow. Unless ``--verbosity``
(``-v``) is on the command line, it quiets TensorFlow's C++ start-up, so
that a binary prints lowtf's lines only:

* ``TF_CPP_MIN_LOG_LEVEL=2`` (unless already set) drops TensorFlow's INFO
  and WARNING lines (oneDNN, CPU instructions, device creation, XLA); the
  ``tensorflow`` Python logger and absl's logging (which TensorFlow's
  SavedModel code uses) log from WARNING up;
* the first ``import tensorflow`` runs with the process's stderr (file
  descriptor 2) sent to a temporary file, and so does the first look at the
  devices: lines that C++ writes straight to the descriptor, which no
  setting reaches (absl's "All log messages before absl::InitializeLog()",
  ``cudart_stub.cc`` on a machine without CUDA, ``cuInit`` failing without
  a GPU driver), are dropped. If the import fails, they are printed after
  all, before its traceback. BUILD_NOTES.md ("Start-up lines") says why.

``--verbosity=0`` (or any level) brings TensorFlow's lines back. Nothing
here changes which devices TensorFlow uses.

:func:`parse_flags` turns absl's flag errors into one ``error: ...`` line
and exit status 2, as lowtf's own refusals. The console scripts
(``lowtf-train``, ``lowtf-sweep``, ``lowtf-export``, ``lowtf-predict``,
``lowtf-bench``, ``lowtf-convert``; setup.cfg) run the ``bin/`` script of the same name.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import runpy
import sys
import tempfile


def _verbose(argv) -> bool:
    """Whether absl's ``--verbosity`` (``-v``) is among the arguments."""
    for arg in argv[1:]:
        if arg == "--":
            break
        name = arg.lstrip("-").partition("=")[0]
        if arg.startswith("-") and name in ("verbosity", "v"):
            return True
    return False


@contextlib.contextmanager
def _stderr_captured():
    """Sends file descriptor 2 to a temporary file; prints it only on an exception."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            capture.seek(0)
            os.write(2, capture.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with the C++ start-up lines captured."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # The module keeps TensorFlow's loader, as an import without us would.
        module.__loader__ = module.__spec__.loader = self.loader
        with _stderr_captured():
            self.loader.exec_module(module)
            # The first look at the devices initializes CUDA (its cuInit line
            # without a GPU driver); it starts no runtime, so a strategy made
            # later is still the first thing to configure it.
            module.config.list_physical_devices()
        # TensorFlow's Python INFO lines (a SavedModel's assets, checkpoint
        # sharding...) too; --verbosity keeps them, as it skips all of this.
        module.get_logger().setLevel(logging.WARNING)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, wrapping its loader in a :class:`_QuietLoader`."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; the search below skips this finder
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_start_up(argv=None) -> bool:
    """Quiets TensorFlow's start-up unless ``--verbosity`` is in ``argv``; True if it did.

    Runs when this module is imported; call it again for other arguments.
    Does nothing once TensorFlow is imported.
    """
    argv = sys.argv if argv is None else argv
    if _verbose(argv) or "tensorflow" in sys.modules:
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # absl's Python INFO lines (TensorFlow's SavedModel and checkpoint code
    # logs through absl); a --verbosity on the command line sets its own.
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    if not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
    return True


def parse_flags(argv):
    """absl's flag parsing, with a bad flag as one ``error: ...`` line and status 2.

    Use as ``app.run(main, flags_parser=lowtf.cli.parse_flags)``; absl's own
    parser prints ``FATAL Flags parsing error`` and exits with status 1.
    """
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def _run_binary(name: str) -> None:
    """Runs ``bin/<name>`` of the lowtf checkout this package is installed from."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bin", name)
    if not os.path.isfile(path):
        sys.exit(
            f"error: lowtf-{name} runs {path}, which is missing: install lowtf from "
            "its checkout with pip install -e ."
        )
    runpy.run_path(path, run_name="__main__")


def train() -> None:
    """``lowtf-train``: bin/train."""
    _run_binary("train")


def sweep() -> None:
    """``lowtf-sweep``: bin/sweep."""
    _run_binary("sweep")


def export() -> None:
    """``lowtf-export``: bin/export."""
    _run_binary("export")


def predict() -> None:
    """``lowtf-predict``: bin/predict."""
    _run_binary("predict")


def bench() -> None:
    """``lowtf-bench``: bin/bench."""
    _run_binary("bench")


def convert() -> None:
    """``lowtf-convert``: bin/convert."""
    _run_binary("convert")


quiet_start_up()
