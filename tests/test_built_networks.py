"""The folder of built int8 networks (embed/onnx.py ``_Built``): what a new build leaves there.
Plain files stand in for networks; no model is needed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgeinfer.embed.onnx import _Built, _mtime


def _put(path: Path, age_s: float) -> None:
    path.write_bytes(b"x")
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_a_new_build_keeps_the_other_build_used_last_and_sweeps_what_dead_writes_left(
    tmp_path: Path,
) -> None:
    """Of three other builds the one used last stays whatever its name (here the middle one);
    a network without its digest stays while its write may be live and goes once it is an hour
    old; a digest without its network goes; so do dead ``.part-*`` files, not live ones."""
    current = _Built(tmp_path, "pair-int8", "now")
    for name, age in (("pair-int8-a", 300.0), ("pair-int8-b", 60.0), ("pair-int8-c", 200.0)):
        _put(tmp_path / f"{name}.onnx", age)
        _put(tmp_path / f"{name}.sha256", age)
    _put(tmp_path / "pair-int8-died.onnx", 7200.0)  # its digest never came
    _put(tmp_path / "pair-int8-writing.onnx", 1.0)  # its digest is being written
    _put(tmp_path / "pair-int8-gone.sha256", 10.0)
    _put(tmp_path / ".part-dead", 7200.0)
    _put(tmp_path / ".part-live", 1.0)
    _put(tmp_path / "minilm-int8-other.onnx", 9999.0)  # another network's build: not ours
    current.write(b"network")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".part-live",
        "minilm-int8-other.onnx",
        "pair-int8-b.onnx",
        "pair-int8-b.sha256",
        "pair-int8-now.onnx",
        "pair-int8-now.sha256",
        "pair-int8-writing.onnx",
    ]


def test_a_damaged_build_is_not_marked_used(tmp_path: Path) -> None:
    """``load`` touches only a network it loads (test_cache_verifier checks that one is)."""
    built = _Built(tmp_path, "pair-int8", "k")
    _put(built.path, 3600.0)
    built.digest.write_text("not its digest")
    before = built.path.stat().st_mtime
    assert built.load(1) is None  # a damaged copy is not loaded, nor marked used
    assert built.path.stat().st_mtime == before


def test_a_file_another_process_removed_is_skipped(tmp_path: Path) -> None:
    assert _mtime(tmp_path / "vanished") is None
    _put(tmp_path / "here", 5.0)
    assert _mtime(tmp_path / "here") is not None
