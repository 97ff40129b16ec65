"""The ``udm-fast`` command line: ``transfer``, ``encode``, ``decode``, ``info``, ``demo``, ``train``,
``synth``, ``eval`` and ``restore``, one module each; ``main`` is the console script's entry point."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
