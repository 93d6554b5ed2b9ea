"""What record identity and version cost a FHIR cohort: append and surveillance, versioned vs plain sources.

Run from the repository root with the project venv active::

    python benchmarks/record_versions.py 10000      # patients of a mgaki.synth cohort

The cohort is written as FHIR NDJSON (``write_fhir``) and read back (``read_fhir`` + ``normalize``):
every row's source is then ``Type/id/_history/h<hash>``. The same tables are appended to two fresh
stores, once as read (versioned: the ledger is built) and once with the ``/_history/...`` suffix
stripped (plain: identical-row deduplication only), and ``surveillance.run`` is timed on each. The
alert counts must agree. Wall times on a shared machine: compare within one run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc

from mgaki.adapters.fhir_bulk import read_fhir, write_fhir
from mgaki.events import EventStore, normalize
from mgaki.surveillance import run
from mgaki.synth import generate


def main(n: int) -> None:
    cohort = generate(n, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_fhir(cohort.tables, d / "fhir")
        t = time.perf_counter()
        tabs = normalize(read_fhir(d / "fhir"))
        print(f"read_fhir + normalize: {time.perf_counter() - t:.2f} s")
        plain = {k: v.set_column(v.schema.get_field_index("source"), "source",
                                 pc.replace_substring_regex(v.column("source"), "/_history/.*$", ""))
                 for k, v in tabs.items()}
        for label, tables in (("versioned", tabs), ("plain", plain)):
            store = EventStore(d / label)
            t = time.perf_counter()
            store.append(tables)
            t_append = time.perf_counter() - t
            t = time.perf_counter()
            res = run(store)
            t_run = time.perf_counter() - t
            print(f"{label:9s} patients {n} events {store.counts()['events']}: append {t_append:.2f} s, "
                  f"surveillance {t_run:.2f} s, alerts {res.tables['alerts'].num_rows}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
