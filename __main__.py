"""`python -m specserve`: the same command line as the `specserve` script."""

import sys

from specserve.cli.main import main

sys.exit(main())
