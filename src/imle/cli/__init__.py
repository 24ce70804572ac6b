"""The ``imle`` command line: ``train``, ``sample``, ``eval``, ``train-classifier``,
``train-encoder``, ``reproduce``, ``datasets`` (`main`). Flags of ``imle train`` are built from
the config dataclasses; every command reports errors as one line (`imle.cli.errors`)."""

from imle.cli.main import main

__all__ = ["main"]
