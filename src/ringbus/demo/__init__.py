"""``ringbus demo``: the seed's e-commerce scenario across processes on an embedded broker (docs/demo.md).

``main(argv) -> int`` runs it; :mod:`ringbus.demo.scenario` holds the orders and the accounting,
:mod:`ringbus.demo.services` the service processes, :mod:`ringbus.demo.display` the progress and summary.
"""

from ringbus.demo.run import main

__all__ = ["main"]
