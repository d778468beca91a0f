"""The ``taccl`` command line (click). Every user error is one line on stderr, exit 2.

One module per command group; importing this package registers every command on
:func:`main` (the console script ``taccl = taccl_py.cli:main``).

>>> from click.testing import CliRunner
>>> CliRunner().invoke(main, ["topology", "list"]).output.split()[0]
'dgx-a100'
"""

from . import pareto, plans, run, sketch, synthesize, topology  # noqa: F401 - registers commands
from .app import main

__all__ = ["main"]
