"""The Bus contract suite: every backend in conftest.BACKENDS must pass every test here."""
