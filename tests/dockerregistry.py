"""Debian's ``docker-registry``, started on 127.0.0.1 and a free port: for the registry tests and the pull benchmark.

Filesystem storage, deletes allowed, no upload purging (it would remove a
test's interrupted uploads behind its back); plain HTTP unless ``tls`` is
given. Standard library only, so that ``benchmarks/pull.py`` can use it too.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@dataclass
class DockerRegistry:
    base: Path
    storage: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    address: str = "127.0.0.1"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @classmethod
    def start(cls, base: Path, storage: Path, auth: dict[str, Any] | None = None, *, address: str = "127.0.0.1",
              tls: dict[str, Any] | None = None, log_level: str = "info", **extra: Any) -> Self:
        """auth: the registry's ``auth`` section; tls: its http.tls (certificate, key, clientcas), HTTPS only;
        extra: more top-level sections (``middleware``). Returns once the port takes connections."""
        base.mkdir(parents=True, exist_ok=True)
        port = free_port(address)
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": log_level, "formatter": "json", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": f"{address}:{port}", "secret": "layerstore", **({"tls": tls} if tls else {})},
        }
        if auth:
            config["auth"] = auth
        config.update(extra)
        path = base / "config.yml"
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        log = base / "registry.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([REGISTRY_BIN, "serve", str(path)], stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT)
        registry = cls(base, storage, port, process, log, address)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection((address, port), timeout=1):
                    return registry
            except OSError:
                time.sleep(0.05)
        registry.stop()
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
