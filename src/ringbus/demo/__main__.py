"""``python -m ringbus.demo``: the same as ``ringbus demo``."""

import sys

from ringbus.demo import main

sys.exit(main())
