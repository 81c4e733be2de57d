"""`python -m lit_snapvideo` is the same as the `lit-snapvideo` command."""

import sys

from .cli import main

sys.exit(main())
