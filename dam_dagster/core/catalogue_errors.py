"""The catalogue's errors, shared by its two backends (core/store.py, core/store_pg.py)."""


class CatalogueError(RuntimeError):
    """Something about the catalogue a person has to act on."""


class CatalogueBusy(CatalogueError):
    """The lock could not be had within the timeout."""


class CatalogueMissing(CatalogueError):
    """A read of a catalogue that does not exist (reading never creates one)."""


class PostgresUnavailable(CatalogueError):
    """The PostgreSQL catalogue cannot be used (unreachable, or a piece not installed)."""
