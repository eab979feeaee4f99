"""`python -m engine` is an alias of the `fedray` command."""

import sys

from engine.cli import main

sys.exit(main())
