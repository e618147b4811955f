"""`python -m rdiunet`: the same command line as `rdiunet`."""

import sys

from rdiunet.cli import main

sys.exit(main())
