"""`python -m picochat` (and `torchrun -m picochat`) run the CLI."""

import sys

from picochat.cli.main import main

sys.exit(main())
