"""`python -m herd.cli ...` (what `torchrun ... -m herd.cli train ...` runs): the `herd` command."""
import sys

from herd.cli.main import main

sys.exit(main())
