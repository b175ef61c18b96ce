"""TableStore.read caches a local table's rows in the process until the table changes."""

import os
import subprocess
import sys

import pandas as pd

from pathomch_assets import tables
from pathomch_assets.tables import TableStore


def rows(n, cohort="c"):
    ids = [f"s{i}" for i in range(n)]
    return pd.DataFrame(
        {"cohort": cohort, "slide_id": ids, "patient_id": "p", "path": ids, "status": "ok", "error": ""}
    )


def test_reads_see_every_write_of_this_process_and_of_another(tmp_path):
    store = TableStore(tmp_path / "tables", tmp_path / "r.duckdb")
    store.write("slides", "c/a", rows(2))
    assert len(store.read("slides")) == 2
    assert len(store.read("slides", "cohort = ?", ["c"])) == 2
    store.write("slides", "c/b", rows(3))  # same process, same instant
    assert len(store.read("slides")) == 5
    store.delete("slides", "c/a")
    assert len(store.read("slides")) == 3
    first = store.read("slides")
    first.loc[0, "status"] = "changed by the caller"  # callers get copies
    assert (store.read("slides").status == "ok").all()
    # another process writes: the folder's mtime moves, the cached rows are not served
    code = (
        "import sys, pandas as pd; from pathomch_assets.tables import TableStore; "
        "TableStore(sys.argv[1], sys.argv[2]).write('slides', 'c/z', pd.DataFrame({'cohort': ['c'], "
        "'slide_id': ['z'], 'patient_id': ['p'], 'path': ['z'], 'status': ['ok'], 'error': ['']}))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "tables"), str(tmp_path / "r.duckdb")], check=True)
    assert "z" in set(store.read("slides").slide_id)
    # and nothing is cached for a table on object storage (no folder mtime to trust)
    assert all(os.path.isabs(k[0]) for k in tables._READS)
