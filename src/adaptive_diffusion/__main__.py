"""`python -m adaptive_diffusion`: the `adaptive-diffusion` command line."""

import sys

from .train._cli import main


sys.exit(main())
