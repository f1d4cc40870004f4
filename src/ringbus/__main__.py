"""``python -m ringbus``: the same as the ``ringbus`` command."""

import sys

from ringbus.cli import main

sys.exit(main())
