"""Atomic writes: the file gets the user's umask (like a plain open), and the replace stays atomic."""

from __future__ import annotations

import builtins
import os
import stat
import sys
from contextlib import contextmanager

import pytest

from prunelab import utils
from prunelab.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, current_umask

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@posix_only
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, mask, expected):
    with umask(mask):
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_text(tmp_path / "b.txt", "y")
        atomic_write_json(tmp_path / "c.json", {"z": 1})
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("p")
    assert mode(tmp_path / "plain.txt") == expected
    for name in ("a.bin", "b.txt", "c.json"):
        assert mode(tmp_path / name) == expected, name


@posix_only
def test_replacing_a_0600_file_gives_the_umask_mode_and_new_content(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old")
    os.chmod(path, 0o600)  # as written by earlier versions (mkstemp's mode)
    with umask(0o022):
        atomic_write_text(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary left behind


@posix_only
def test_umask_is_read_without_changing_it_with_and_without_proc(monkeypatch):
    with umask(0o027):
        assert current_umask() == 0o027
        real_open = builtins.open

        def no_proc(file, *args, **kwargs):
            if str(file) == "/proc/self/status":
                raise FileNotFoundError(file)
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", no_proc)
        assert current_umask() == 0o027  # the os.umask fallback
        assert os.umask(0o027) == 0o027  # and it left the umask as it was


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(utils.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
