"""SIGKILL in the middle of writes leaves a valid cache holding every committed entry."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from edgeinfer.cache.connection import connect
from edgeinfer.cache.store import CacheStore
from edgeinfer.embed.fake import FakeEmbedder

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edgeinfer.cache.entry import CacheEntry
    from edgeinfer.cache.store import CacheStore
    from edgeinfer.embed.fake import FakeEmbedder

    emb = FakeEmbedder(64)
    store = CacheStore(Path(sys.argv[1]), dim=64, max_bytes=1 << 40, ttl_s=None)
    store.start()
    batch = 0
    while True:
        keys = []
        for i in range(25):
            key = f"k{batch}-{i}"
            question = f"question {batch} {i} about sqlite"
            store.put(CacheEntry(key, f"ns{batch % 3}", "tiny", "d", question,
                                 emb.embed([question])[0], {"answer": "x" * 2000}, 1, 2, 0.1))
            keys.append(key)
        store.flush(30)  # returns once every put above is committed
        print(" ".join(keys), flush=True)
        batch += 1
    """
)


def test_sigkill_mid_write_keeps_every_committed_entry(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    committed: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            for _ in range(12):
                line = child.stdout.readline()
                assert line, "the writer child died"
                committed += line.split()
            child.send_signal(signal.SIGKILL)  # it is writing the next batches right now
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == -signal.SIGKILL

    conn = connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    vectors = conn.execute("SELECT count(*) FROM entry_vectors").fetchone()[0]
    assert entries == vectors >= len(committed)  # whole transactions: never one without the other
    conn.close()

    store = CacheStore(path, dim=64, max_bytes=1 << 40, ttl_s=None)
    store.start()
    try:
        missing = [k for k in committed if store.lookup_exact(k) is None]
        assert not missing
        question = "question 5 7 about sqlite"
        hit = store.lookup_semantic("ns2", FakeEmbedder(64).embed([question])[0], question, 0.99)
        assert hit is not None and hit.question == question
    finally:
        store.close()
