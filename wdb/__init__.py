"""wdb: a database for neural-network checkpoints.

import wdb
db = wdb.open(".wdb")            # creates or upgrades the database directory
db.ingest("zoo/")
ids = [c["checkpoint_id"] for c in db.checkpoints(where="kind = 'training'")]
X = db.weights(ids)              # np.ndarray [n, D]
runs = db.search_runs().df()     # pandas, params.* / metrics.* / tags.* columns
wdb.log_checkpoint(model.state_dict(), run="r1", step=100, metrics={"loss": 0.3}, db=".wdb")

See docs/api.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from wdb.db import Database


def open(  # noqa: A001
    path: Any = None, catalog_url: str | None = None, store_url: str | None = None
) -> Database:
    """Open (creating or upgrading) the database directory at ``path`` (default ``./.wdb``);
    ``catalog_url`` / ``store_url`` (or ``WDB_CATALOG_URL`` / ``WDB_STORE_URL``) move the catalog
    to a server and the Zarr stores to object storage."""
    from wdb.db import open as _open

    return _open(path, catalog_url, store_url)


def log_checkpoint(state_dict: Any, run: str, step: int, **kw: Any) -> int:
    """Write one checkpoint from a training loop (``metrics``, ``config``, ``db``, ``zoo``);
    see :func:`wdb.integrations.log.log_checkpoint`."""
    from wdb.integrations.log import log_checkpoint as _log

    return _log(state_dict, run, step, **kw)


def __getattr__(name: str) -> Any:
    if name == "Database":
        from wdb.db import Database

        return Database
    raise AttributeError(name)
