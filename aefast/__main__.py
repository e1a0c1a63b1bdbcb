"""``python -m aefast``: the ``aefast`` command, for environments whose scripts folder is not on PATH."""
import sys

from aefast.cli import main

sys.exit(main())
