"""The package version: the one place it is written (setup.py and ``udm_fast.__version__`` read it)."""

__version__ = "0.1.0"
