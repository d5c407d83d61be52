"""Small files in a model directory, read and written through ``tf.io.gfile``.

Everything :func:`lowtf.fit` keeps in ``model_dir`` goes through TensorFlow's
file systems, so the directory may be local, on GCS (``gs://``, what a
multi-worker run shares) or in memory (``ram://``, in tests). Plain ``open``
and ``os.replace`` only know the local disk.

No function here globs: TensorFlow's checkpoint functions read ``[``, ``*``
and ``?`` in a path as a pattern, and a user's directory may hold them.
"""

from __future__ import annotations

import os
import re

import tensorflow as tf

# Suffix of the file a replacement is written to before it is renamed.
TMP_SUFFIX = ".tmp"


def write_atomically(path: str, text: str | bytes) -> None:
    """Replaces ``path`` by ``text``: a reader sees the old file or the new one.

    The text goes to ``<path>.tmp`` first, then a rename with overwrite
    replaces ``path`` (atomic on POSIX and on ram://; on GCS a copy that
    readers see whole or not at all). ``GFile`` has no fsync: the rename
    survives a crash of the process, not necessarily a power cut.
    The temporary file is deleted if anything fails.
    """
    tmp = path + TMP_SUFFIX
    # A leftover of a killed writer goes first: TensorFlow 2.21's ram:// file
    # system appends to an existing file even in mode "w".
    if tf.io.gfile.exists(tmp) and not tf.io.gfile.isdir(tmp):
        tf.io.gfile.remove(tmp)
    try:
        with tf.io.gfile.GFile(tmp, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        try:
            remove_if_present(tmp)
        except tf.errors.OpError:
            pass  # the error that got us here is the one to report
        raise


def append(path: str, text: str) -> None:
    """Appends ``text`` to ``path`` (made if missing); it is on disk on return.

    The file is opened and closed per call, so a killed run loses no
    appended text, and no handle is left open between calls.
    """
    with tf.io.gfile.GFile(path, "a") as f:
        f.write(text)


def read_text(path: str) -> str | None:
    """The text of ``path``, or None if there is no such file."""
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return f.read()
    except tf.errors.NotFoundError:
        # Not tf.io.gfile.exists first: ram:// (TF 2.21) takes any prefix of
        # a file's name for a directory, so "best.json" "exists" while only
        # "best.json.tmp" does.
        return None


def remove_if_present(path: str) -> None:
    """Deletes the file or directory tree at ``path``; nothing if it is gone."""
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
        pass  # deleted in between (another cleanup, a concurrent prune)


def write_checkpoint(write, prefix: str):
    """Runs ``write()`` (a checkpoint save to ``prefix``); a failure is one readable line.

    TensorFlow reports a full disk or a denied write with its op's internals
    (``{{function_node __wrapped__SaveV2...}}``); this raises ``OSError``
    naming ``prefix`` and the cause instead, after deleting the incomplete
    files of the new checkpoint (older checkpoints are not touched).
    """
    try:
        return write()
    except tf.errors.OpError as error:
        folder, name = os.path.split(prefix)
        if tf.io.gfile.isdir(folder):
            for entry in tf.io.gfile.listdir(folder):
                if entry.rstrip("/").startswith((name + ".", name + "_temp")):
                    remove_if_present(os.path.join(folder, entry.rstrip("/")))
        raise OSError(f"cannot write the checkpoint {prefix}: {gist(error)}") from None


def gist(error: BaseException) -> str:
    """A TensorFlow error's message without its op and function-node decorations."""
    text = str(getattr(error, "message", error))
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\]", "", text)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:300]
