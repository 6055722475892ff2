"""The PostgreSQL backend (psycopg 3): the same tables, chain and API as SQLite's.

Imported only for a ``postgresql://`` database (the ``postgres`` extra installs psycopg):

- :mod:`.connection`: connections as the engine uses them, error classes, the chain's lock;
- :mod:`.schema`: the tables in PostgreSQL's types and their migrations;
- :mod:`.append`: the chain's tail and the chained ``COPY`` (and the injected-connection insert);
- :mod:`.sink`: :class:`PostgresSink`, the writer's ``ChainSink``;
- :mod:`.trail`: :class:`PgTrail`, the connection the shared read, purge and replay code runs on.
"""

from audit_engine.storage.postgres.append import (
    chain_tail,
    migrate_caller_connection,
    write_batch,
    write_in_caller_transaction,
    write_many_in_caller_transaction,
)
from audit_engine.storage.postgres.connection import PG, classify, connect, mask_url
from audit_engine.storage.postgres.schema import (
    SCHEMA_VERSION,
    TABLE,
    migrate,
    schema_version,
    trail_bytes,
)
from audit_engine.storage.postgres.sink import PostgresSink
from audit_engine.storage.postgres.trail import PgTrail, open_trail

__all__ = [
    "PG",
    "SCHEMA_VERSION",
    "TABLE",
    "PgTrail",
    "PostgresSink",
    "chain_tail",
    "classify",
    "connect",
    "mask_url",
    "migrate",
    "migrate_caller_connection",
    "open_trail",
    "schema_version",
    "trail_bytes",
    "write_batch",
    "write_in_caller_transaction",
    "write_many_in_caller_transaction",
]
