"""The driver as podman's overlay mount program, the place fuse-overlayfs usually takes.

containers/storage's overlay driver starts its ``mount_program`` as
``PROGRAM -o lowerdir=...,upperdir=...,workdir=..., MERGED`` for each
container or image it mounts, and unmounts the mount itself. With a mount
program, ``podman diff`` and ``podman commit`` read a container's changes by
comparing mounts, so they see what the driver shows, renamed lower
directories included. The same changes made in a container that the driver
mounts and in one that the kernel's overlayfs mounts (podman's default) must
give the same ``podman diff``, and commit to images whose trees are the same;
so must a build, containers that run programs on the driver's mount, and
rootless podman, which starts the driver in its user namespace.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import mounts
import pytest
from difftree import diff_maps, view
from users import NOBODY, errno_as

import unionfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("podman"), reason="needs root and podman")
EXAMPLE = Path(__file__).resolve().parents[2] / "layerstore/demo/example.tar"
IMAGE = "docker.io/example/demo:latest"
# Containers: no network (rootless podman's needs /dev/net/tun), and limits below podman's
# defaults (a million open files, and its own process limit), which are above what a root
# without CAP_SYS_RESOURCE may raise the runtime's limits to.
CONTAINERS = ("--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
RUNTIME = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")  # crun refuses hybrid cgroups
Podman = Callable[..., str]


def podman_with(root: Path, mount_program: str | None) -> Iterator[Podman]:
    runroot = Path(tempfile.mkdtemp(prefix="podrun-"))  # podman refuses a runroot longer than 50 characters
    base = ["podman", "--root", str(root), "--runroot", str(runroot), "--storage-driver", "overlay", *RUNTIME]
    if mount_program is not None:
        # podman passes mountopt on to its mount program: allow_other lets containers that run
        # as users other than root into their rootfs (fuse-overlayfs adds it itself when root)
        base += ["--storage-opt", f"overlay.mount_program={mount_program}", "--storage-opt", "overlay.mountopt=allow_other"]

    def run(*args: str) -> str:
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr}"
        return result.stdout.strip()

    try:
        yield run
    finally:
        for undo in (["rm", "--all", "--force", "--time", "0"], ["umount", "--all"], ["image", "umount", "--all"]):
            subprocess.run([*base, *undo], capture_output=True, timeout=120)
        shutil.rmtree(runroot, ignore_errors=True)


@pytest.fixture
def kernel_podman(tmp_path: Path) -> Iterator[Podman]:
    yield from podman_with(tmp_path / "kernel", None)


@pytest.fixture
def driver_podman(tmp_path: Path) -> Iterator[Podman]:
    program = shutil.which("unionfs")
    assert program is not None, "the unionfs command is not installed"
    yield from podman_with(tmp_path / "driver", program)


def change(rootfs: Path) -> None:
    """What a build step might do: write, append to, remove and add files of the
    image's layers, move a lower directory (mv copies it where rename says EXDEV)
    and remove another."""
    (rootfs / "hello.txt").write_text("hello\n")
    with open(rootfs / "etc/passwd", "a") as f:
        f.write("extra:x:1234:1234::/:/bin/sh\n")
    (rootfs / "etc/os-release").unlink()
    (rootfs / "new/sub").mkdir(parents=True)
    (rootfs / "new/sub/file").write_bytes(b"\0" * 5000)
    (rootfs / "link").symlink_to("etc/passwd")
    os.chmod(rootfs / "etc/www", 0o700)
    subprocess.run(["mv", str(rootfs / "usr/share"), str(rootfs / "usr/moved")], check=True)
    shutil.rmtree(rootfs / "var")


def test_podman_commits_through_the_driver_what_it_commits_through_overlayfs(
        kernel_podman: Podman, driver_podman: Podman) -> None:
    diffs, trees = [], []
    for podman in (kernel_podman, driver_podman):
        podman("load", "-q", "-i", str(EXAMPLE))
        podman("create", "--name", "box", IMAGE)
        change(Path(podman("mount", "box")))
        diffs.append(sorted(podman("diff", "box").splitlines()))
        podman("umount", "box")
        podman("commit", "-q", "box", "changed")
        diffs.append(sorted(podman("diff", "changed").splitlines()))
        trees.append(view(podman("image", "mount", "changed"), lsattr=False).entries)
        podman("image", "umount", "changed")
    kernel_box, kernel_image, driver_box, driver_image = diffs
    assert "D /etc/os-release" in kernel_box and "A /usr/moved/doc" in kernel_box, kernel_box
    # Comparing mounts, podman also lists as changed each directory that holds a change
    # (Docker's rule for its own diffs): /srv, which holds /srv/www (changed by a chmod
    # through the symlink /etc/www). From overlayfs's upper layer it lists what changed.
    assert "C /srv" not in kernel_box and "C /srv/www" in kernel_box
    assert driver_box == sorted([*kernel_box, "C /srv"])
    assert driver_image == sorted([*kernel_image, "C /srv"])
    assert "usr/moved/doc" in trees[0] and "var" not in trees[0]
    assert not diff_maps(*trees)


CONTAINERFILE = """\
FROM docker.io/example/demo:latest
COPY file /etc/copied
COPY tree /usr/share/tree
ADD file /srv/www/added
COPY file tree/sub/deep /opt/both/
"""


def test_podman_builds_through_the_driver_what_it_builds_through_overlayfs(
        tmp_path: Path, kernel_podman: Podman, driver_podman: Podman) -> None:
    """A build whose steps copy into the image: each step mounts the working container,
    writes into it and commits (RUN steps: see the test of containers below)."""
    context = tmp_path / "context"
    (context / "tree/sub").mkdir(parents=True)
    (context / "file").write_text("copied\n")
    (context / "tree/sub/deep").write_text("deep\n")
    (context / "Containerfile").write_text(CONTAINERFILE)
    trees = []
    for podman in (kernel_podman, driver_podman):
        podman("load", "-q", "-i", str(EXAMPLE))
        podman("build", "-q", "--cgroup-manager", "cgroupfs", "-t", "built", str(context))
        trees.append(view(podman("image", "mount", "built"), lsattr=False).entries)
        podman("image", "umount", "built")
    assert {"etc/copied", "usr/share/tree/sub/deep", "srv/www/added", "opt/both/deep"} <= set(trees[0])
    assert not diff_maps(*trees)


# An image built with RUN steps (containers started by the runtime on the image being built),
# from busybox alone: its applets, a tree to change, and a home for a user (USER_HOME: not for
# rootless podman, whose user namespace maps one ID here).
BUSYBOX_CONTAINERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p -m 1777 /tmp && mkdir -p /srv/data /srv/tree/sub /opt/gone \\
 && echo one > /srv/data/log && echo old > /srv/data/old && echo deep > /srv/tree/sub/deep \\
 && ln -s sub/deep /srv/tree/link && echo gone > /opt/gone/file
"""
USER_HOME = "RUN mkdir -p /home/user && echo mine > /home/user/notes && chown -R 1000:1000 /home/user\n"
# What runs in the containers: as root, then as a user.
AS_ROOT = """
    echo changed >> /srv/data/log && rm /srv/data/old && mv /srv/tree /srv/moved
    rm -rf /opt/gone && mkdir /opt/gone && echo new > /opt/gone/file
    cp -a /srv/moved /srv/copy && ln /srv/data/log /srv/data/log2 && chmod 600 /srv/data/log
    tar -C /srv -cf /tmp/t.tar moved && mkdir /srv/untar && tar -C /srv/untar -xf /tmp/t.tar && rm /tmp/t.tar
    sed -i s/deep/DEEP/ /srv/copy/sub/deep && mkfifo /srv/fifo
    find /srv /opt | sort && cat /srv/data/log2 /srv/copy/sub/deep && stat -c '%h %a %n' /srv/data/log
"""
AS_USER = """
    cd /home/user && echo more >> notes && mkdir d && mv notes d/ && touch d/new && stat -c "%a %u %g %s %n" d/*
    echo x >> /srv/data/log 2>/dev/null || echo refused
"""


def busybox_context(tmp_path: Path, containerfile: str) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox is not installed"
    shutil.copy(busybox, context / "busybox")
    (context / "Containerfile").write_text(containerfile)
    return context


def test_podman_runs_containers_on_the_driver_as_on_overlayfs(
        tmp_path: Path, kernel_podman: Podman, driver_podman: Podman) -> None:
    """Containers whose root is the driver's mount (pivoted into, with /proc, /dev and
    podman's files mounted over its entries): a build with RUN steps, then programs
    run in a container as root and as a user, must print and commit what they do on
    overlayfs. (Their ``podman diff`` differs by podman's two ways of reading changes,
    see above: a directory whose entries came and went is changed in overlayfs's upper
    layer and not when mounts are compared.)"""
    context = busybox_context(tmp_path, BUSYBOX_CONTAINERFILE + USER_HOME)
    outputs, trees = [], []
    for podman in (kernel_podman, driver_podman):
        podman("build", "-q", *CONTAINERS, "-t", "busybox", str(context))
        outputs.append(podman("run", "--name", "box", *CONTAINERS, "busybox", "sh", "-euc", AS_ROOT))
        podman("commit", "-q", "box", "after-root")
        outputs.append(podman("run", "--name", "user", "--user", "1000:1000", *CONTAINERS, "after-root", "sh", "-euc", AS_USER))
        podman("commit", "-q", "user", "after-user")
        # A directory's link count depends on how many layers it spans, which is up to
        # podman's way of reading changes (above): /tmp is in the kernel's layer, /opt/gone
        # opaque there.
        trees.append({path: replace(meta, nlink=0) if meta.kind == "dir" else meta
                      for path, meta in view(podman("image", "mount", "after-user"), lsattr=False).entries.items()})
        podman("image", "umount", "after-user")
    kernel_root, kernel_user, driver_root, driver_user = outputs
    assert "/srv/moved/sub/deep" in kernel_root and "/opt/gone/file" in kernel_root and "refused" in kernel_user
    assert (driver_root, driver_user) == (kernel_root, kernel_user)
    assert not diff_maps(*trees)


# What the rootless test does in a container, as a shell script in its rootfs ($M).
ROOTLESS_CHANGES = """
    echo hello > "$M/hello.txt"
    echo extra >> "$M/etc/passwd"
    rm "$M/etc/os-release"
    mv "$M/usr/share" "$M/usr/moved"
    rm -rf "$M/var"
    mkdir "$M/var"
    echo x > "$M/var/x"
"""
# What the image's tree holds, as text: kinds, modes, sizes, link targets and contents.
TREE = """cd "$M" && find . -printf '%p %y %m %s %l\\n' | sort && find . -type f -exec md5sum {} + | sort"""


class RootlessPodman:
    """Rootless podman, run by nobody, with a store of its own: no subordinate IDs, so
    its user namespace maps nobody alone (to its root); its mounts live in that
    namespace, which ``podman unshare`` enters."""

    def __init__(self, base: Path, name: str, mount_program: str | None, mountopt: str | None = None) -> None:
        home, run = base / name, base / f"{name}-run"
        for directory in (home, run):
            directory.mkdir(mode=0o700)
            os.chown(directory, NOBODY, NOBODY)
        self.home = home
        self.command = ["podman", "--root", str(home / "storage"), "--runroot", str(run / "storage"), "--storage-driver", "overlay",
                        *RUNTIME]
        if mount_program is not None:
            self.command += ["--storage-opt", f"overlay.mount_program={mount_program}"]
            if mountopt is not None:
                self.command += ["--storage-opt", f"overlay.mountopt={mountopt}"]
        self.environment = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_RUNTIME_DIR": str(run)}

    def __call__(self, *args: str) -> str:
        result = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *self.command, *args],
                                cwd=self.home, env=self.environment, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr}"
        return result.stdout.strip()

    def inside(self, script: str) -> str:
        """script run by bash in podman's namespace, where ``podman`` is this store's."""
        return self("unshare", "bash", "-euc", f"podman() {{ command {' '.join(self.command)} \"$@\"; }}\n{script}")

    def image_tree(self, image: str) -> str:
        """TREE of an image, mounted in podman's namespace for the while."""
        return self.inside(f"M=$(podman image mount {image})\n{TREE}\npodman image umount {image} >/dev/null")


def driver_for_nobody(base: Path) -> str:
    """A mount program that nobody can run: a copy of this driver's package, started by
    the first Python here that nobody can run and that imports it (the tests' own, or
    Debian's, with python3-xxhash, where the tests' lies in root's home)."""
    code = base / "code"
    shutil.copytree(Path(unionfs.__file__).parent, code / "unionfs", ignore=shutil.ignore_patterns("__pycache__"))

    def imports(python: str) -> None:
        if subprocess.run([python, "-c", "import unionfs.mount"], env={"PYTHONPATH": str(code)}, capture_output=True).returncode:
            raise OSError(errno.ENOEXEC, f"{python} does not import the driver")

    for python in (sys.executable, "/usr/bin/python3"):
        if errno_as(NOBODY, lambda python=python: imports(python), cwd=base) is None:  # type: ignore[misc]
            program = base / "unionfs"
            program.write_text(f'#!/bin/sh\nPYTHONPATH={code} exec {python} -m unionfs "$@"\n')
            program.chmod(0o755)
            return str(program)
    pytest.fail(f"no Python here that nobody can run imports the driver (tried {sys.executable} and /usr/bin/python3)")


def stop_namespaces(base: Path) -> None:
    """The pause processes that keep rootless podman's namespaces, and whatever else
    still runs on the test's paths: a driver left in those namespaces, a podman stopped
    by a timeout."""
    for pid_file in base.glob("*-run/libpod/tmp/pause.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    found = subprocess.run(["pgrep", "-f", str(base)], capture_output=True, text=True)
    for pid in found.stdout.split():
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def rootless() -> Iterator[tuple[Path, str]]:
    """A directory for rootless podman's stores, and a driver that nobody can run."""
    base = Path(tempfile.mkdtemp(prefix="podless-", dir="/tmp"))  # nobody must reach it
    try:
        base.chmod(0o755)
        with mounts.device_open_to_users():
            yield base, driver_for_nobody(base)
    finally:
        stop_namespaces(base)
        shutil.rmtree(base, ignore_errors=True)


def readable_copy(source: Path, base: Path) -> Path:
    copy = base / source.name
    shutil.copyfile(source, copy)
    copy.chmod(0o644)
    return copy


def test_rootless_podman_commits_through_the_driver_what_it_commits_through_overlayfs(rootless: tuple[Path, str]) -> None:
    """Rootless podman starts its mount program in its user namespace, where trusted.*
    xattrs cannot be written; a lower directory moved and another made again where
    one was removed must commit as they do through the kernel's overlayfs, which
    rootless podman mounts there with userxattr."""
    base, program = rootless
    example = readable_copy(EXAMPLE, base)
    trees = []
    for name, mount_program in (("kernel", None), ("driver", program)):
        podman = RootlessPodman(base, name, mount_program)
        podman("load", "-q", "-i", str(example))
        podman("create", "--name", "box", IMAGE)
        podman.inside(f"M=$(podman mount box)\n{ROOTLESS_CHANGES}\npodman umount box >/dev/null")
        podman("commit", "-q", "box", "changed")
        trees.append(podman.image_tree("changed"))
    kernel, driver = trees
    assert "./usr/moved/doc d" in kernel and "./var/x f 644 2" in kernel and "./etc/os-release" not in kernel
    assert driver == kernel


def test_rootless_podman_runs_a_container_on_the_driver_as_on_overlayfs(
        tmp_path: Path, kernel_podman: Podman, rootless: tuple[Path, str]) -> None:
    """A container of rootless podman, in its user namespace, on the driver that
    podman started there: what it prints and what commits must be what it prints
    and commits on the kernel's overlayfs."""
    base, program = rootless
    context = busybox_context(tmp_path, BUSYBOX_CONTAINERFILE)
    kernel_podman("build", "-q", *CONTAINERS, "-t", "busybox", str(context))
    kernel_podman("save", "-q", "-o", str(tmp_path / "busybox.tar"), "busybox")
    archive = readable_copy(tmp_path / "busybox.tar", base)
    outputs, trees = [], []
    for name, mount_program in (("kernel", None), ("driver", program)):
        podman = RootlessPodman(base, name, mount_program)
        podman("load", "-q", "-i", str(archive))
        outputs.append(podman("run", "--name", "box", *CONTAINERS, "localhost/busybox", "sh", "-euc", AS_ROOT))
        podman("commit", "-q", "box", "changed")
        trees.append(podman.image_tree("changed"))
    assert "/srv/moved/sub/deep" in outputs[0] and "./opt/gone/file f 644 4" in trees[0]
    assert (outputs[1], trees[1]) == (outputs[0], trees[0])


# Subordinate IDs that nobody holds while a test runs (unless it holds some already: a
# second range for one user makes rootless podman fall back to mapping nobody alone).
SUBORDINATE_IDS = "nobody:400000:65536\n"


@pytest.fixture
def subordinate_ids() -> Iterator[None]:
    """Rootless podman maps nobody's subordinate IDs into its user namespace (from 1 up
    there), so that its containers may run as users other than its root."""
    saved: dict[Path, bytes | None] = {}
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        saved[path] = path.read_bytes() if path.exists() else None
        if not any(line.split(":")[0] in ("nobody", str(NOBODY)) for line in (saved[path] or b"").decode().splitlines()):
            with path.open("a") as f:
                f.write(SUBORDINATE_IDS)
    try:
        yield
    finally:
        for path, data in saved.items():
            if data is None:
                path.unlink()
            else:
                path.write_bytes(data)


# What a user (1000 in the container) does in rootless podman's container: copy up and
# move its own lower file, make entries (owned by the user), and meet the modes of others.
ROOTLESS_AS_USER = """
    cd /home/user && echo more >> notes && mkdir d && mv notes d/ && touch d/new && ln d/new d/hard
    ln -s new d/soft && chmod 2750 d && echo mine > /tmp/own && chmod 600 /tmp/own && mkfifo /tmp/fifo
    stat -c "%A %u %g %h %s %n" d d/* /tmp/own /tmp/fifo
    echo x >> /srv/data/log 2>/dev/null || echo refused
    rm /srv/data/old 2>/dev/null || echo refused too
"""
# TREE with owners.
OWNED_TREE = """cd "$M" && find . -printf '%p %y %m %U:%G %n %s %l\\n' | sort && find . -type f -exec md5sum {} + | sort"""


def test_rootless_podman_runs_a_user_container_on_the_driver_as_on_overlayfs(
        tmp_path: Path, kernel_podman: Podman, rootless: tuple[Path, str], subordinate_ids: None) -> None:
    """Rootless podman with subordinate IDs, a container run as a user other than its
    root: the driver, given allow_other (``overlay.mountopt``) as for root's podman,
    must let the user in, make its entries the user's, and refuse it what overlayfs
    refuses; what it prints and what commits, owners included, as on overlayfs."""
    base, program = rootless
    context = busybox_context(tmp_path, BUSYBOX_CONTAINERFILE + USER_HOME)
    kernel_podman("build", "-q", *CONTAINERS, "-t", "busybox", str(context))
    kernel_podman("save", "-q", "-o", str(tmp_path / "busybox.tar"), "busybox")
    archive = readable_copy(tmp_path / "busybox.tar", base)
    outputs, trees = [], []
    for name, mount_program in (("kernel", None), ("driver", program)):
        podman = RootlessPodman(base, name, mount_program, mountopt="allow_other")
        podman("load", "-q", "-i", str(archive))
        outputs.append(podman("run", "--name", "user", "--user", "1000:1000", *CONTAINERS, "localhost/busybox", "sh", "-euc",
                              ROOTLESS_AS_USER))
        podman("commit", "-q", "user", "changed")
        trees.append(podman.inside(f"M=$(podman image mount changed)\n{OWNED_TREE}\npodman image umount changed >/dev/null"))
    assert "-rw-r--r-- 1000 1000 2 0 d/new" in outputs[0] and "refused too" in outputs[0], outputs[0]
    assert "./home/user/d d 2750 1000:1000" in trees[0] and "./tmp/own f 600 1000:1000 1 5" in trees[0]
    assert (outputs[1], trees[1]) == (outputs[0], trees[0])
