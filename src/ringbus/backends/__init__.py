"""One module per engine behind the Bus contract (ringbus.bus)."""
