"""Interrupted and simultaneous pulls, shown by the registry's own access log.

A TCP proxy in front of the registry cuts, stalls or slows the answers. The
registry logs every answer with its status and the bytes it wrote, so a
resumed download shows up as a 206 answer of exactly the bytes that were
missing, and a download done once as one GET of the blob.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import requests
from regkit import PASSWORD, RUNNER, USER, Answer, Asked, Front, Proxy, World, cli, runner_env
from waiting import wait_for

from layerstore.registry import download
from layerstore.store import Store

BIG = "big:v1"


def big_blob(world: World) -> tuple[str, int]:
    r = requests.get(f"http://{world.open.host}/v2/big/manifests/v1",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    (layer,) = r.json()["layers"]
    return layer["digest"], layer["size"]


def blob_answers(world: World, mark: int, digest: str, count: int) -> list[dict]:
    """The registry's answers for the blob since mark, once count of them are logged (or
    10 s passed): an answer the client left unread is logged only when the registry gives
    up writing it, which can come after the pull has ended."""
    deadline = time.monotonic() + 10
    while True:
        answers = [r for r in world.open.requests(mark) if r["uri"].endswith(f"/blobs/{digest}")]
        if len(answers) >= count or time.monotonic() > deadline:
            return answers


def pulled_through(proxy: Proxy, world: World, tmp_path: Path, digest: str) -> list[dict]:
    """Pull the big image through proxy (stopped afterwards), which must succeed: what
    the registry answered for the blob meanwhile (two answers: the first one cut or
    dropped, then the next)."""
    mark = world.open.mark()
    try:
        result = cli(tmp_path, "pull", f"{proxy.host}/{BIG}")
    finally:
        proxy.stop()
    assert result.rc == 0, result.err
    return blob_answers(world, mark, digest, 2)


def partial_file(root: Path, digest: str) -> Path:
    return root / "ingest" / f"{digest.split(':')[1]}.partial"


def test_a_dropped_connection_resumes_with_a_range_request(world: World, tmp_path: Path) -> None:
    digest, size = big_blob(world)
    proxy = Proxy(world.open.port, mode="cut", after=2 << 20)
    answers = pulled_through(proxy, world, tmp_path, digest)
    assert proxy.tripped.is_set()
    # the cut 200 answer is logged when the registry gives up writing it: after the 206, as often as not
    assert sorted(a["status"] for a in answers) == [200, 206]
    resumed = next(a["written"] for a in answers if a["status"] == 206)
    assert 0 < resumed < size - (1 << 20)  # only the missing tail came again
    with Store(tmp_path) as store:
        assert store.blobs.has(digest)
        assert store.resolve(f"{proxy.host}/{BIG}")
    assert not partial_file(tmp_path, digest).exists()


def test_a_killed_pull_resumes_from_the_byte_it_reached(world: World, tmp_path: Path) -> None:
    digest, size = big_blob(world)
    proxy = Proxy(world.open.port, mode="stall", after=3 << 20)
    partial = partial_file(tmp_path, digest)
    try:
        child = subprocess.Popen([sys.executable, str(RUNNER), "--root", str(tmp_path), "pull", f"{proxy.host}/{BIG}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=runner_env())
        try:
            assert wait_for(lambda: proxy.tripped.is_set() and partial.exists() and partial.stat().st_size > (2 << 20), 20.0)
            time.sleep(0.2)  # what the proxy let through is on disk
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    finally:
        proxy.stop()
    have = partial.stat().st_size
    assert 0 < have < size
    with Store(tmp_path) as store:  # killed mid-layer: no image, nothing half registered
        assert store.meta.query("SELECT * FROM images") == []
        assert not store.blobs.has(digest)
        assert store.prune_unreferenced()["blobs"] >= 0  # the dead pull's lease does not hold prune
        assert store.meta.query("SELECT * FROM leases") == []

    mark = world.open.mark()
    result = cli(tmp_path, "pull", world.name(world.open, BIG))
    assert result.rc == 0, result.err
    answers = blob_answers(world, mark, digest, 1)
    assert [(a["status"], a["written"]) for a in answers] == [(206, size - have)]
    assert not partial.exists()
    with Store(tmp_path) as store:
        assert store.blobs.has(digest)
        layer = store.layers.path(store.image_layers(store.resolve(world.name(world.open, BIG)))[0])
        assert (layer / "data/big.bin").stat().st_size == 6 << 20


def test_two_pulls_at_once_download_once(world: World, tmp_path: Path) -> None:
    digest, size = big_blob(world)
    proxy = Proxy(world.open.port, mode="slow", rate=8 << 20)  # about 0.8 s for the big layer
    mark = world.open.mark()
    partial = partial_file(tmp_path, digest)
    env = runner_env()
    cmd = [sys.executable, str(RUNNER), "--root", str(tmp_path), "pull", f"{proxy.host}/{BIG}"]
    try:
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert wait_for(lambda: partial.exists() and partial.stat().st_size > 0, 20.0)
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        out1, err1 = first.communicate(timeout=60)
        out2, err2 = second.communicate(timeout=60)
    finally:
        proxy.stop()
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    answers = blob_answers(world, mark, digest, 1)
    assert [(a["status"], a["written"]) for a in answers] == [(200, size)]
    short = digest.split(":")[1][:12]
    assert f"{short}: Verifying Checksum" in out1.splitlines()
    assert f"{short}: Verifying Checksum" not in out2.splitlines()  # the second found the blob verified in the store
    assert f"{short}: Pull complete" in out2.splitlines()
    with Store(tmp_path) as store:
        assert len(store.meta.query("SELECT * FROM images")) == 1
    assert not partial.exists()
    assert out2.splitlines()[-1] == f"{proxy.host}/{BIG}"


def test_a_partial_file_that_does_not_verify_is_downloaded_again(world: World, tmp_path: Path) -> None:
    digest, size = big_blob(world)
    partial = partial_file(tmp_path, digest)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * (1 << 20))  # not the blob's first bytes
    mark = world.open.mark()
    result = cli(tmp_path, "pull", world.name(world.open, BIG))
    assert result.rc == 0, result.err
    answers = blob_answers(world, mark, digest, 2)
    assert [(a["status"], a["written"]) for a in answers] == [(206, size - (1 << 20)), (200, size)]
    assert not partial.exists()


def test_storage_that_ignores_range_is_read_from_the_start(world: World, tmp_path: Path) -> None:
    """The blob storage behind a redirect answers 200 to a Range request: the download starts over."""
    digest, size = big_blob(world)
    head = world.open.blob_path(digest).read_bytes()[: 1 << 20]
    partial = partial_file(tmp_path, digest)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(head)  # right bytes, but the server will not skip them
    host = world.redirecting.host
    assert cli(tmp_path, "login", host, "-u", USER, "--password-stdin", stdin=PASSWORD).rc == 0
    seen = len(world.storage.paths)
    result = cli(tmp_path, "pull", f"{host}/{BIG}")
    assert result.rc == 0, result.err
    asked = [r for p, r in zip(world.storage.paths[seen:], world.storage.ranges[seen:]) if digest.split(":")[1] in p]
    assert asked == [f"bytes={1 << 20}-"]
    with Store(tmp_path) as store:
        assert store.blobs.size(digest) == size


@pytest.mark.parametrize("lie", ["start", "total"])
def test_a_206_whose_content_range_names_other_bytes_is_not_used(world: World, tmp_path: Path, lie: str) -> None:
    """A resumed answer must start at the byte asked for and end at the blob's size: one whose
    Content-Range says otherwise is dropped, and the blob asked for again from byte 0."""
    digest, size = big_blob(world)
    have = 1 << 20
    partial = partial_file(tmp_path, digest)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(world.open.blob_path(digest).read_bytes()[:have])
    true = f"Content-Range: bytes {have}-{size - 1}/{size}"
    told = f"Content-Range: bytes {have + 1}-{size - 1}/{size}" if lie == "start" else f"Content-Range: bytes {have}-{size - 1}/{size + 1}"
    assert len(told) == len(true)
    proxy = Proxy(world.open.port, rewrite={true.encode(): told.encode()})
    answers = pulled_through(proxy, world, tmp_path, digest)
    assert proxy.rewritten == 1
    assert sorted(a["status"] for a in answers) == [200, 206]  # the 206 left unread, then the whole blob
    with Store(tmp_path) as store:
        assert store.blobs.size(digest) == size
    assert not partial.exists()


def test_a_reconnect_answered_with_the_whole_blob_skips_the_bytes_it_has(world: World, tmp_path: Path) -> None:
    """Storage that ignores Range answers a reconnect with 200 and the whole blob: the bytes the
    download has already are skipped, not written twice."""
    digest, size = big_blob(world)
    cut = 2 << 20

    def hook(asked: Asked) -> Answer | None:
        if asked.method != "GET" or not asked.path.endswith(f"/blobs/{digest}"):
            return None
        without_range = {k: v for k, v in asked.headers.items() if k.lower() != "range"}
        status, headers, body = asked.forward(without_range)
        if asked.header("Range") is None:  # the first answer: cut after 2 MiB
            return status, {**headers, "Content-Length": str(len(body))}, body[:cut]
        return status, headers, body

    front = Front(world.open.port, hook)
    try:
        result = cli(tmp_path, "pull", f"{front.host}/{BIG}")
    finally:
        front.stop()
    assert result.rc == 0, result.err
    assert [a.header("Range") for a in front.asked if a.path.endswith(f"/blobs/{digest}")] == [None, f"bytes={cut}-"]
    with Store(tmp_path) as store:
        assert store.blobs.size(digest) == size
        layer = store.layers.path(store.image_layers(store.resolve(f"{front.host}/{BIG}"))[0])
        assert (layer / "data/big.bin").stat().st_size == 6 << 20


def test_a_download_that_keeps_failing_gives_up_after_its_reconnects(world: World, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that drops is resumed RECONNECTS times, each after a longer pause (0.2 s, doubled
    each time), then the download fails at the byte it reached."""
    digest, size = big_blob(world)
    first = download.NET_READ  # one whole read of the body, then the connection drops
    slept: list[float] = []
    monkeypatch.setattr(download, "time", types.SimpleNamespace(sleep=slept.append))

    def hook(asked: Asked) -> Answer | None:
        if asked.method != "GET" or not asked.path.endswith(f"/blobs/{digest}"):
            return None
        data = world.open.blob_path(digest).read_bytes()
        asked_range = asked.header("Range")
        if asked_range is None:  # the first bytes, then the connection drops
            return 200, {"Content-Length": str(size)}, data[:first]
        start = int(asked_range.removeprefix("bytes=").removesuffix("-"))
        return 206, {"Content-Length": str(size - start), "Content-Range": f"bytes {start}-{size - 1}/{size}"}, b""

    front = Front(world.open.port, hook)
    try:
        result = cli(tmp_path, "pull", f"{front.host}/{BIG}")
    finally:
        front.stop()
    assert result.rc == 1
    assert result.err.startswith(f"Error: blob {digest}: download failed at byte {first} (") and result.err.count("\n") == 1
    ranges = [a.header("Range") for a in front.asked if a.path.endswith(f"/blobs/{digest}")]
    assert ranges == [None] + [f"bytes={first}-"] * download.RECONNECTS
    assert slept == [0.2, 0.4, 0.8, 1.6, 3.2]
    with Store(tmp_path) as store:
        assert store.meta.query("SELECT * FROM images") == []
    assert partial_file(tmp_path, digest).stat().st_size == first  # kept for the next pull to resume
