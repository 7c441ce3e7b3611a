"""Mount the example layers, look around, write, and show what the upper layer holds.

    python3 -m unionfs.demo

A walk through the driver on two OCI-style layer directories shipped with the
package: ``app`` on top of ``base``, where ``app`` deletes ``/var/cache`` with
a ``.wh.cache`` whiteout. Runs as root (kernel whiteout form in the upper).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from unionfs.mount import MountError, MountSpec, mounted

LAYERS = Path(__file__).parent / "layers"


def show(title: str, *cmd: str) -> bool:
    """Print the command as typed, run it; whether it succeeded."""
    print(f"\n# {title}\n$ {shlex.join(cmd)}", flush=True)
    return subprocess.run(cmd, check=False).returncode == 0


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="unionfs-demo-"))
    try:
        upper, work, mnt = scratch / "upper", scratch / "work", scratch / "merged"
        for d in (upper, work, mnt):
            d.mkdir()
        spec = MountSpec((str(LAYERS / "app"), str(LAYERS / "base")), str(upper), str(work))
        print(f"unionfs -o {spec.option_string()} {mnt}")
        with mounted(spec, str(mnt)):
            shown = [
                # find reads the "\n" of -printf itself, so the command prints as typed
                show("the merged view: /var/cache is whited out by the app layer", "find", str(mnt), "-printf", "%y %P\\n"),
                show("the top layer wins", "cat", str(mnt / "etc/os-release")),
                show("a symlink of the app layer into its own tree", "cat", str(mnt / "etc/www/index.html")),
            ]
            with (mnt / "etc/passwd").open("a") as passwd:
                passwd.write("demo:x:1000:1000::/home/demo:/bin/sh\n")
            os.unlink(mnt / "usr/share/doc/demo/README")
            (mnt / "srv/www/new.html").write_text("<p>written through the mount</p>\n")
            shown += [
                show("after an append, an unlink and a new file", "cat", str(mnt / "etc/passwd")),
                show("the upper layer: copied-up parents, the copied-up file, a whiteout",
                     "find", str(upper), "-printf", "%y %M %P\\n"),
                show("the lower layers are unchanged", "cat", str(LAYERS / "base/etc/passwd")),
            ]
        print(f"\nunmounted {mnt}")
        if not all(shown):
            print("unionfs demo: a command above failed", file=sys.stderr)
            return 1
        return 0
    except (MountError, OSError) as exc:
        print(f"unionfs demo: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
