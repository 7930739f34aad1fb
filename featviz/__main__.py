"""``python -m featviz`` (and ``torchrun ... -m featviz``): the command line's entry point.

The one place the package reaches the CLI: an entry shim, not library code (the library itself
never imports ``featviz.cli``, which setuptools installs from the top-level ``cli/`` folder)."""

from featviz.cli.main import run

if __name__ == "__main__":
    run()
