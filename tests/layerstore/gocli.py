"""Docker's CLI output made by Go's own packages: ``gocli/main.go``, built with
Debian's Go (``golang-go``) and kept running while a test module asks it.

The differential tests of ``layerstore.formatting``, ``reference`` and
``queries`` hand it the same input as the Python code and compare what both
print or read.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).parent / "gocli" / "main.go"
LIBRARIES = Path("/usr/share/gocode/src")  # where Debian's golang-*-dev packages put Go sources

Ask = Callable[[dict[str, Any]], dict[str, Any]]


@contextmanager
def running(work: Path) -> Iterator[Ask]:
    """Build the program in work and yield a function that sends it one request."""
    gobin = shutil.which("go")
    assert gobin, "Go is needed (Debian's golang-go): these tests compare with Go's own packages"
    assert (LIBRARIES / "github.com/docker/distribution/reference").is_dir(), \
        "Debian's golang-github-docker-distribution-dev is needed: image names are compared with its reference package"
    assert (LIBRARIES / "github.com/docker/go-units").is_dir(), \
        "Debian's golang-github-docker-go-units-dev is needed: sizes and ages are compared with its go-units"
    env = {**os.environ, "GOCACHE": str(work / "cache"), "GO111MODULE": "off", "GOPATH": f"{work / 'path'}:{LIBRARIES.parent}"}
    subprocess.run([gobin, "build", "-o", str(work / "gocli"), str(SOURCE)], check=True, env=env, cwd=work)
    proc = subprocess.Popen([str(work / "gocli")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        answer: dict[str, Any] = json.loads(stdout.readline())
        assert answer.get("stage") not in ("data", "request"), answer
        return answer

    try:
        yield ask
    finally:
        stdin.close()
        proc.wait(timeout=10)
