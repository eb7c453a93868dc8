"""Training over a dataset folder served by HTTP (microdit.data.remote): the same losses as over the
folder on disk, through a shard cache smaller than the dataset, and an exact resume after kill -9."""

import functools
import http.server
import shutil
import signal
import threading

import pytest

from microdit import run as runs
from microdit.cli.data import main as data_main
from microdit.data import DataError, LatentBatches, load_manifest
from microdit.data.remote import ShardCache, load_remote_manifest

from train_helpers import base_overrides, popen_train, run_train, stats, wait_for_rows

pytestmark = pytest.mark.slow
LONG = ["+stages={pretrain: {mask: {ratio: 0.5}, images: 416, lr: 0.001, warmup_images: 16}}"]  # 52 steps


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Quiet.requests.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(local dataset folder, its URL): 96 synthetic samples in 6 shards behind a local HTTP server."""
    root = tmp_path_factory.mktemp("served")
    data_main(["synthetic", str(root / "images"), "--num-samples", "96", "--shard-size", "16", "--size", "32"])
    data_main(["encode", str(root / "images"), str(root / "ds"), "--device", "cpu"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root / "ds", f"http://127.0.0.1:{server.server_address[1]}/ds"
    server.shutdown()


def _over(tmp_path, data, name, cache, extra=()):
    return base_overrides(tmp_path, data, name, LONG) + [f"data.cache_dir={cache}", *extra]


def test_a_run_over_the_url_equals_the_run_over_the_folder_and_resumes_exactly(served, tmp_path):
    folder, url = served
    run_train(_over(tmp_path, folder, "local", tmp_path / "unused"))
    shard_bytes = load_manifest(folder).shards[0].bytes
    small = [f"data.cache_gb={2.5 * shard_bytes / 1e9}"]  # 2 of the 6 shards fit: evictions and refetches
    _Quiet.requests.clear()
    run_train(_over(tmp_path, url, "remote", tmp_path / "cache", small))
    fetched = [p for p in _Quiet.requests if p.endswith(".tar")]
    assert len(fetched) > 6  # every shard over HTTP, some again after their eviction
    local, remote = stats(tmp_path / "runs" / "local"), stats(tmp_path / "runs" / "remote")
    assert len(local) >= 50 and [r["loss"] for r in remote[:50]] == [r["loss"] for r in local[:50]]
    assert [r["loss"] for r in remote] == [r["loss"] for r in local]
    cached = list((tmp_path / "cache").glob("*/*.tar"))
    assert 0 < len(cached) <= 2 and sum(p.stat().st_size for p in cached) <= 2.5 * shard_bytes

    killed = _over(tmp_path, url, "killed", tmp_path / "cache2", small + ["trainer.ckpt_every_images=96"])
    proc = popen_train(killed)
    wait_for_rows(tmp_path / "runs" / "killed", 200, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert runs.latest(tmp_path / "runs" / "killed") is not None
    shutil.rmtree(tmp_path / "cache2")  # a fresh machine: nothing cached
    result = run_train(killed)
    assert "resumed from" in result.stdout + result.stderr
    assert [r["loss"] for r in stats(tmp_path / "runs" / "killed")] == [r["loss"] for r in local]  # bit-identical


def test_a_shard_changed_at_the_source_is_refused(served, tmp_path):
    folder, url = served
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = load_manifest(copy)
    stream = LatentBatches(url, batch_size=8, cache=ShardCache(tmp_path / "cache"))
    assert stream.batch(0)["latent"].shape[0] == 8
    assert load_remote_manifest(url).shards == manifest.shards
    bad = ShardCache(tmp_path / "cache-bad")
    wrong = manifest.shards[0].__class__(manifest.shards[0].name, 16, manifest.shards[0].bytes, "0" * 64)
    with pytest.raises(DataError, match="does not match its manifest entry"):
        bad.local(url, wrong)
    assert not list((tmp_path / "cache-bad").glob("*/*.tar"))  # nothing unchecked is kept
    with pytest.raises(DataError, match="does not exist|could not read"):
        load_remote_manifest(url + "-missing")
    with pytest.raises(DataError, match="larger than the shard cache"):
        ShardCache(tmp_path / "c", limit_gb=1e-9).local(url, manifest.shards[0])
