"""SAM checkpoint registry, cache resolution and resumable download, against a local HTTP server only."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from napari_imedsam.model import weights
from napari_imedsam.model.weights import (
    ENV_CACHE,
    SAM_CHECKPOINTS,
    CheckpointNotFound,
    CheckpointSpec,
    ChecksumError,
    OfflineError,
    download_file,
    resolve_checkpoint,
    tqdm_progress,
)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` with Range support; can cut the connection or ignore Range."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        srv.requests.append(self.headers.get("Range"))
        data, start = srv.payload, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            cut, srv.cut_after = srv.cut_after, None  # cut once, then behave
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    payload = bytes(range(256)) * 1000 + b"tail"  # ~256 kB
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.requests, srv.cut_after, srv.ignore_range = payload, [], None, False
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/sam_test.pth"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _spec(server, **kw) -> dict[str, CheckpointSpec]:
    fields = dict(name="sam_test", filename="sam_test.pth", url=server.url, size=len(server.payload),
                  sha256=_sha(server.payload), md5=_md5(server.payload)[:6])
    fields.update(kw)
    return {"sam_test": CheckpointSpec(**fields)}


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/sam_test.pth"


def test_registry_entries():
    assert set(SAM_CHECKPOINTS) == {"sam_vit_b", "sam_vit_l", "sam_vit_h"}
    for name, spec in SAM_CHECKPOINTS.items():
        assert spec.name == name and spec.url.endswith("/" + spec.filename)
        suffix = spec.filename.rsplit("_", 1)[1].removesuffix(".pth")
        assert spec.md5.startswith(suffix)  # the SAM file names carry the MD5's first 6 digits
        assert spec.size > 300_000_000 and len(spec.sha256) == 64


def test_full_download_verified_with_progress(server, tmp_path):
    dest = tmp_path / "cache" / "sam_test.pth"
    seen = []
    out = download_file(server.url, dest, expected_size=len(server.payload), sha256=_sha(server.payload),
                        md5_prefix=_md5(server.payload)[:6], progress=lambda d, t: seen.append((d, t)),
                        chunk_size=10_000)
    assert out == dest and dest.read_bytes() == server.payload
    assert not dest.with_name("sam_test.pth.part").exists()
    assert seen[-1] == (len(server.payload), len(server.payload)) and len(seen) > 5
    assert server.requests == [None]


def test_interrupted_download_resumes_with_range(server, tmp_path):
    dest = tmp_path / "sam_test.pth"
    part = tmp_path / "sam_test.pth.part"
    server.cut_after = 100_000
    with pytest.raises(OfflineError, match="resume"):
        download_file(server.url, dest, expected_size=len(server.payload), sha256=_sha(server.payload),
                      chunk_size=8192)
    assert part.exists() and 0 < part.stat().st_size < len(server.payload)
    assert not dest.exists()
    kept = part.stat().st_size
    download_file(server.url, dest, expected_size=len(server.payload), sha256=_sha(server.payload))
    assert server.requests[-1] == f"bytes={kept}-"
    assert dest.read_bytes() == server.payload and not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    dest = tmp_path / "sam_test.pth"
    (tmp_path / "sam_test.pth.part").write_bytes(b"garbage-that-must-not-survive")
    server.ignore_range = True
    download_file(server.url, dest, expected_size=len(server.payload), sha256=_sha(server.payload))
    assert server.requests == ["bytes=29-"]
    assert dest.read_bytes() == server.payload


def test_wrong_checksum_refused(server, tmp_path):
    dest = tmp_path / "sam_test.pth"
    with pytest.raises(ChecksumError, match="SHA-256"):
        download_file(server.url, dest, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "sam_test.pth.part").exists()
    with pytest.raises(ChecksumError, match="MD5"):
        download_file(server.url, dest, md5_prefix="zzzzzz")
    with pytest.raises(ChecksumError, match="bytes"):
        download_file(server.url, dest, expected_size=len(server.payload) + 1)
    assert not dest.exists() and not (tmp_path / "sam_test.pth.part").exists()


def test_unreachable_server_gives_offline_message(server, tmp_path):
    registry = _spec(server, url=_closed_port_url())
    cache = tmp_path / "cache"
    with pytest.raises(OfflineError) as info:
        resolve_checkpoint("sam_test", cache_dir=cache, download=True, registry=registry)
    msg = str(info.value)
    assert "sam_test.pth" in msg and str(cache) in msg and ENV_CACHE in msg
    assert isinstance(info.value, CheckpointNotFound) and isinstance(info.value, FileNotFoundError)
    assert not (cache / "sam_test.pth").exists()


def test_resolve_order(server, tmp_path, monkeypatch):
    registry = _spec(server)
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "envcache"))
    # 1. an explicit path wins, and a missing one is named.
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"x")
    assert resolve_checkpoint("sam_test", path=explicit, registry=registry) == explicit
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_checkpoint("sam_test", path=tmp_path / "nope.pth", registry=registry)
    # 2. without the file and without the flag: no request, a message saying what to put where.
    with pytest.raises(CheckpointNotFound) as info:
        resolve_checkpoint("sam_test", registry=registry)
    msg = str(info.value)
    assert "sam_test.pth" in msg and str(tmp_path / "envcache") in msg and server.url in msg
    assert server.requests == []
    assert not (tmp_path / "envcache").exists()  # the cache is created only for a download
    # 3. with the flag: downloaded into the cache; 4. then a cache hit, no further request.
    got = resolve_checkpoint("sam_test", download=True, registry=registry)
    assert got == tmp_path / "envcache" / "sam_test.pth" and got.read_bytes() == server.payload
    assert resolve_checkpoint("sam_test", registry=registry) == got
    assert len(server.requests) == 1
    # A truncated file in the cache is reported, not used.
    got.write_bytes(b"short")
    with pytest.raises(ChecksumError, match="incomplete"):
        resolve_checkpoint("sam_test", registry=registry)
    with pytest.raises(ValueError, match="unknown checkpoint"):
        resolve_checkpoint("sam_vit_x")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_CACHE, raising=False)
    default = weights.default_cache_dir()
    assert default.name == "checkpoints" and "napari-imedsam" in str(default)
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "c"))
    assert weights.default_cache_dir() == tmp_path / "c"


def test_tqdm_progress(server, tmp_path):
    bar = tqdm_progress("test")
    download_file(server.url, tmp_path / "f.bin", progress=bar, chunk_size=50_000)
    bar.close()
    assert (tmp_path / "f.bin").read_bytes() == server.payload
