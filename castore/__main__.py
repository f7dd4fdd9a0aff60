"""``python -m castore``: the castore command."""

import sys

from castore.cli.main import main

sys.exit(main())
