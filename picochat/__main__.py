"""`python -m picochat` (and `torchrun -m picochat`) run the CLI."""

import sys

from picochat.cli import main

sys.exit(main())
