"""Dataset caches: beside a writable dataset, in the user's cache for a read-only one (a shared
folder: here os.access reports it read-only, since tests may run as root), and a cache already
beside the dataset is read by everyone."""

import os
import shutil

import pytest

import microdit.data.cache as cache
import microdit.data.encode as encode
from microdit.cli.data import main as data_main
from microdit.data import verify_dataset
from microdit.data.cache import dataset_cache


@pytest.fixture()
def read_only(monkeypatch, tmp_path):
    """Make every path under the returned folder read-only for microdit.data.cache; user cache in tmp."""
    shared = tmp_path / "shared"
    shared.mkdir()
    real_access = os.access
    monkeypatch.setattr(cache.os, "access", lambda p, mode: False if str(p).startswith(str(shared)) and
                        mode & os.W_OK else real_access(p, mode))
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "user-cache"))
    return shared


def test_a_writable_dataset_keeps_its_caches_beside_it(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    path = dataset_cache(folder, "probe/probe-10steps.pt")
    assert path == folder / "probe" / "probe-10steps.pt" and path.parent.is_dir()


def test_a_read_only_dataset_caches_in_the_user_cache_keyed_by_its_path(read_only, tmp_path):
    a, b = read_only / "x" / "data", read_only / "y" / "data"  # two datasets of one name
    for folder in (a, b):
        folder.mkdir(parents=True)
    pa, pb = dataset_cache(a, "eval_stats/s.npz"), dataset_cache(b, "eval_stats/s.npz")
    root = tmp_path / "user-cache"
    assert pa.is_relative_to(root) and pb.is_relative_to(root) and pa != pb
    assert pa.parts[-3].startswith("data-") and pa.parent.is_dir()
    assert not (a / "eval_stats").exists()
    assert dataset_cache(a, "eval_stats/s.npz") == pa  # the same place next time


def test_a_cache_already_beside_a_read_only_dataset_is_read_there(read_only):
    folder = read_only / "data"
    (folder / "probe").mkdir(parents=True)
    (folder / "probe" / "p.pt").write_bytes(b"built by the dataset's owner")
    assert dataset_cache(folder, "probe/p.pt") == folder / "probe" / "p.pt"


def test_a_read_only_dataset_is_hashed_once(read_only, tmp_path, monkeypatch):
    data_main(["synthetic", str(tmp_path / "img"), "--num", "6", "--size", "16"])
    data_main(["encode", str(tmp_path / "img"), str(tmp_path / "lat"), "--text-encoder", "offline:32:8",
               "--device", "cpu"])
    shutil.copytree(tmp_path / "lat", read_only / "lat")  # built elsewhere, then shared
    shutil.rmtree(tmp_path / "user-cache", ignore_errors=True)
    (read_only / "lat" / encode.VERIFIED).unlink(missing_ok=True)
    hashed = []
    real = encode.sha256_of
    monkeypatch.setattr(encode, "sha256_of", lambda p: hashed.append(p) or real(p))
    verify_dataset(read_only / "lat")
    verify_dataset(read_only / "lat")
    assert len(hashed) == 1  # one shard, hashed by the first check only
    assert not (read_only / "lat" / encode.VERIFIED).exists()
    assert any((tmp_path / "user-cache").glob(f"lat-*/{encode.VERIFIED}"))


def test_a_user_cache_that_cannot_be_created_says_what_to_set(read_only, tmp_path, monkeypatch):
    """A read-only dataset and a user cache folder that cannot be made (a read-only home): one line
    naming the cache, the folder, and the variable that moves it."""
    plain = tmp_path / "plain"
    plain.write_text("a file where the cache folder would go: nothing can be created under it, even by root")
    monkeypatch.setenv(cache.CACHE_ENV, str(plain / "cache"))
    folder = read_only / "data"
    folder.mkdir()
    with pytest.raises(PermissionError, match=rf"^the cache probe/p\.pt of dataset {folder} goes in the user's cache "
                                              rf"folder .*, but {plain / 'cache'}/data-\w+/probe cannot be created "
                                              r"\(Not a directory\): set MICRODIT_CACHE to a folder you can write$"):
        dataset_cache(folder, "probe/p.pt")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux's /proc")
def test_a_folder_that_takes_no_file_caches_in_the_user_cache(tmp_path, monkeypatch):
    """The permission bits are not the whole answer: root passes them for /proc (as for a read-only
    mount or an NFS share that squashes root), where no file can be made; such a dataset folder's
    caches go to the user cache, not to a PermissionError at mkdir."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "user-cache"))
    path = dataset_cache("/proc", "probe/p.pt")
    assert path.is_relative_to(tmp_path / "user-cache") and path.parent.is_dir()
