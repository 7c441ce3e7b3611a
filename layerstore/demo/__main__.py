"""The whole job on the embedded example: load, list, mount, explore, write, diff, unmount.

    python3 -m layerstore.demo

Runs the real ``layerstore`` commands against a scratch store and prints
each command before its output, the way a person would type them.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLE = Path(__file__).parent / "example.tar"


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="layerstore-demo-"))
    root, mnt = scratch / "store", scratch / "rootfs"
    mnt.mkdir()
    ls = [sys.executable, "-m", "layerstore", "--root", str(root)]

    failed: list[str] = []

    def step(title: str, *cmd: str, shown: str | None = None) -> int:
        print(f"\n# {title}\n$ {shown or shlex.join(cmd)}", flush=True)
        code = subprocess.run(cmd).returncode
        if code:
            failed.append(title)
        return code

    def outcome() -> int:
        if failed:
            print(f"layerstore demo: failed: {'; '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0

    try:
        if step("load the example image (a docker-archive made by skopeo)", *ls, "load", "-i", str(EXAMPLE), shown=f"layerstore load -i {EXAMPLE.name}"):
            return outcome()
        step("list it", *ls, "images", shown="layerstore images")
        if step("mount its rootfs with a writable container layer", *ls, "mount", "--name", "demo", "example/demo", str(mnt), shown=f"layerstore mount --name demo example/demo {mnt}"):
            return outcome()
        try:
            step("explore", "ls", "-la", str(mnt), str(mnt / "etc"))
            step("the top layer's file wins", "cat", str(mnt / "etc/os-release"))
            step("a script of the base layer", "sh", str(mnt / "bin/hello"))
            script = f"echo 'demo:x:1000:1000::/home/demo:/bin/sh' >> {mnt}/etc/passwd; echo new > {mnt}/srv/www/new.html; rm {mnt}/usr/share/doc/demo/*"
            step("write: append, add, delete", "sh", "-c", script, shown=script)
            step("what changed, as docker diff shows it", *ls, "diff", "demo", shown="layerstore diff demo")
            step("containers", *ls, "ps", shown="layerstore ps")
        finally:
            step("unmount", *ls, "umount", "demo", shown="layerstore umount demo")
        step("remove the container", *ls, "rm", "demo", shown="layerstore rm demo")
        step("and the image", *ls, "rmi", "example/demo", shown="layerstore rmi example/demo")
        return outcome()
    finally:
        subprocess.run([*ls, "rm", "-f", "demo"], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
