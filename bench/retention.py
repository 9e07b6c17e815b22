"""How fast retention purges: series picked, marked and their files deleted per second.

Fills a fresh database with SERIES settled series of INSTANCES instances each,
received 60 days ago, with no job (so every one is purgeable), then runs
:class:`storage.retention.RetentionStore` passes of 100 series until none is
left.  The files do not exist (the deletion's unlink finds nothing), so the
figure is the database's part of a purge.

    python -m bench.retention sqlite:////tmp/retention.db --series 2000 --instances 50
    python -m bench.retention postgresql+psycopg://postgres@127.0.0.1:5432/DBNAME
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, text

from storage.db import Database
from storage.models import Instance, Series, Study, utcnow
from storage.retention import RetentionStore


def fill(db: Database, n_series: int, per: int) -> None:
    """Settled series received 60 days ago, one study each, no job."""
    old = utcnow() - timedelta(days=60)
    with db.engine.begin() as conn:
        for s in range(n_series):
            study = conn.execute(
                insert(Study)
                .values(
                    study_instance_uid=f"1.2.826.0.1.3680043.8.498.9.{s}",
                    first_received_at=old,
                    last_received_at=old,
                    collected_at=old,
                )
                .returning(Study.id)
            ).scalar_one()
            at = old + timedelta(seconds=s)
            series = conn.execute(
                insert(Series)
                .values(
                    series_instance_uid=f"1.2.826.0.1.3680043.8.498.9.{s}.1",
                    study_id=study,
                    attributes={},
                    first_received_at=at,
                    last_received_at=at,
                    collected_at=at,
                )
                .returning(Series.id)
            ).scalar_one()
            conn.execute(
                insert(Instance),
                [
                    {
                        "sop_instance_uid": f"1.2.826.0.1.3680043.8.498.9.{s}.1.{i}",
                        "series_id": series,
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "path": f"{s}/{i}.dcm",
                        "size_bytes": 525_000,
                        "sha256": "0" * 64,
                        "received_at": at,
                        "receive_count": 1,
                    }
                    for i in range(per)
                ],
            )
    if not db.is_sqlite:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="an empty database (SQLite file or PostgreSQL)")
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=50)
    args = parser.parse_args()
    db = Database(args.url)
    db.upgrade()
    fill(db, args.series, args.instances)
    with tempfile.TemporaryDirectory() as empty:
        store = RetentionStore(db, Path(empty), Path(empty))
        start = time.perf_counter()
        purged = 0
        while cands := store.candidates(older_than=utcnow(), limit=100):
            marked = store.mark(cands)
            store.delete_files(marked)
            purged += len(marked)
        took = time.perf_counter() - start
    db.dispose()
    print(
        f"{db.engine.dialect.name}: {purged} series x {args.instances} instances purged "
        f"in {took:.1f} s: {purged / took:.0f} series/s, {purged * args.instances / took:.0f} "
        "instances/s"
    )


if __name__ == "__main__":
    main()
