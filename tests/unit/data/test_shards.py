"""Shard writing and reading: round trip, atomic writes, truncated shards named."""

import re
import tarfile

import numpy as np
import pytest

from microdit.data import DataError
from microdit.data.shards import ShardWriter, iter_shard, load_npy, npy_bytes


def test_shard_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "a.tar"
    with ShardWriter(path) as w:
        for i in range(3):
            w.write(f"k{i}", {"latent.npy": npy_bytes(np.full((2, 2), i, np.float16)), "txt": f"cap {i}".encode()})
        assert not path.exists()  # only the temporary file exists before close
        info = w.close()
    assert info.samples == 3 and info.bytes == path.stat().st_size and len(info.sha256) == 64
    got = list(iter_shard(path))
    assert [k for k, _ in got] == ["k0", "k1", "k2"]
    assert load_npy(got[2][1]["latent.npy"], "x").tolist() == [[2, 2], [2, 2]]
    assert got[1][1]["txt"] == b"cap 1"


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "b.tar"
    with pytest.raises(RuntimeError), ShardWriter(path) as w:
        w.write("k0", {"txt": b"x"})
        raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []  # neither the shard nor its temporary file
    with pytest.raises(ValueError, match="without '.'"), ShardWriter(tmp_path / "c.tar") as w:
        w.write("a.b", {"txt": b"x"})


def test_truncated_shard_is_named(tmp_path):
    path = tmp_path / "t.tar"
    with ShardWriter(path) as w:
        for i in range(4):
            w.write(f"k{i}", {"bin": bytes(3000)})
        w.close()
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        second = tar.getmembers()[1]
    path.write_bytes(data[:second.offset_data + 100])  # inside the second sample's data
    with pytest.raises(DataError, match=re.escape(f"shard {path}: corrupt or truncated tar at sample 'k1'")):
        list(iter_shard(path))
    path.write_bytes(data[:second.offset])  # on a header boundary: only the missing end marker tells
    with pytest.raises(DataError, match=re.escape(f"shard {path}: truncated tar (no end-of-archive marker")):
        list(iter_shard(path))
    with pytest.raises(DataError, match="missing"):
        list(iter_shard(tmp_path / "none.tar"))

