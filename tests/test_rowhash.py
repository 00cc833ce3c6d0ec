"""Row hashes: one DuckDB per process, a cursor per call, and a forked child that neither crashes nor hangs."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from warehouse import rowhash

ROOT = Path(__file__).resolve().parents[1]


def _table(names: list[str]) -> pa.Table:
    return pa.table({"personal_id": [f"0370{i:08d}" for i in range(len(names))], "full_name": names,
                     "birth_date": pa.array([19000 + i for i in range(len(names))], pa.int32()).cast(pa.date32())})


def test_the_same_rows_hash_the_same_in_every_thread_and_a_change_shows():
    table = _table(["Nguyễn Văn An", "Trần Thị Bình", "Lê Văn Cường"] * 1000)
    first = rowhash.row_hashes(table).to_pylist()
    with ThreadPoolExecutor(4) as pool:  # each call its own cursor on the one database
        again = list(pool.map(lambda _: rowhash.row_hashes(table).to_pylist(), range(8)))
    assert all(hashes == first for hashes in again)
    assert len(set(first)) == 3000  # every row differs by its key
    changed = table.set_column(1, "full_name", pa.array(["Nguyễn Văn Ân"] + table.column(1).to_pylist()[1:]))
    hashes = rowhash.row_hashes(changed).to_pylist()
    assert hashes[0] != first[0] and hashes[1:] == first[1:]
    assert rowhash.row_hashes(table.slice(0, 0)).to_pylist() == []


def test_a_forked_child_hashes_with_its_own_duckdb_and_exits_cleanly():
    """The parent's DuckDB (warmed, its threads started) is left alone in a child that ends normally.

    Freeing the copy there would wait for threads the fork did not copy: a crash (SIGSEGV)
    or a hang at the child's exit.
    """
    script = textwrap.dedent("""
        import os, sys
        import pyarrow as pa
        from warehouse import rowhash
        table = pa.table({"a": ["x", "y", "z"], "b": [1, 2, 3]})
        rowhash.warm(table.schema)
        parent = rowhash.row_hashes(table).to_pylist()
        pid = os.fork()
        if pid == 0:
            child = rowhash.row_hashes(table).to_pylist()
            sys.exit(0 if child == parent else 3)  # through the interpreter's finalization
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "child 0", (done.stdout, done.stderr[-2000:])
