"""`python -m nanodiffusion.cli` is `nanodiff`."""

import sys

from nanodiffusion.cli import main

sys.exit(main())
