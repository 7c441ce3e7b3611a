"""Real programs through the driver and through kernel overlayfs leave the same trees.

The generated operations in ``test_differential`` are single system calls.
Programs combine them in their own ways: git writes objects through
temporary files and renames, packs them and fsyncs, and a local clone links
a lower repository's objects; SQLite in WAL mode maps
its shared-memory file and locks byte ranges while another process reads,
and in rollback-journal mode rolls a lower database back from the hot
journal that a process cut short left;
Python's bytecode cache renames over files; tar, ``cp -a``, ``sed -i`` and
``rm -rf`` work on lower trees; processes share a mapping of a lower file,
a socket and a fifo; dpkg links each file it replaces to a backup name
before renaming the new one over it, and update-alternatives renames
symlinks over lower ones; make, the compiler, ar and strip build a lower
project through temporary files; rsync renames its temporary files over
lower ones and links new names to them; useradd and its kin lock a lower
/etc by a hard link and rename new files over old ones; pip moves a lower
package's directories aside by renaming them, installs the new version in
their place and then removes what it moved. Each script runs in
both mounts over the same lower layers, and must succeed in both, print the
same, and leave the same merged view and upper layer (``Pair.check``).

What depends on the mount rather than on the program is taken out before
the comparison: git's index records inode numbers and change times, so
each script checks it (``git status`` must show a clean tree) and then
removes it.
"""
from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from difftree import CachesDropped, Dir, File, HardLink, Pair, Symlink, kernel_overlay_available, pair, pair_over

pytestmark = [
    pytest.mark.usefixtures("transport"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel overlayfs)"),
    pytest.mark.skipif(os.geteuid() == 0 and not kernel_overlay_available(), reason="kernel overlayfs not available"),
]

SOURCE = Dir({
    "README": File(b"a small tree\n" * 40),
    "pkg": Dir({
        "__init__.py": File(b"from pkg.mod import VALUE\n"),
        "mod.py": File(b"VALUE = 41\n"),
        "sub": Dir({"deep.py": File(b"DEEP = 'deep'\n"), "data.bin": File(bytes(range(256)) * 64, mode=0o600)}),
    }),
    "bin": Dir({"tool": File(b"#!/bin/sh\necho tool\n", mode=0o755), "link": Symlink("tool")}),
    "notes.txt": File(b"one\ntwo\nthree\n", xattrs=(("user.note", b"kept"),)),
    "twin": HardLink("src/notes.txt"),
})
USER = (1000, 1000)
HOME = Dir({
    "notes": File(b"mine\n", owner=USER),
    "docs": Dir({"a": File(b"a\n", owner=USER), "old": Dir({"x": File(b"x", owner=USER)}, owner=USER)}, owner=USER),
    "from-root": File(b"root's, in the user's directory\n", mode=0o600),
}, mode=0o700, owner=USER)
SHARED = Dir({"roots": File(b"root's\n"), "users": File(b"the user's\n", owner=USER)}, mode=0o1777)
PROJECT = Dir({
    "Makefile": File(b"demo: main.o libdemo.a\n\t$(CC) -o $@ main.o libdemo.a\n\tstrip $@\n"
                     b"libdemo.a: lib.o\n\t$(AR) rcs $@ lib.o\n"
                     b"%.o: %.c lib.h\n\t$(CC) -O1 -c $< -o $@\n"
                     b"clean:\n\trm -f demo *.o libdemo.a\n"),
    "main.c": File(b'#include <stdio.h>\n#include "lib.h"\nint main(void) { printf("%d\\n", value()); return 0; }\n'),
    "lib.c": File(b'#include "lib.h"\nint value(void) { return 41; }\n'),
    "lib.h": File(b"int value(void);\n"),
    "NOTES": File(b"first\nsecond\n"),
    "OLD": File(b"old\n"),
})
LOWERS = [
    Dir({"etc": Dir({
        "conf": File(b"key=old\n"),
        "passwd": File(b"root:x:0:0:root:/root:/bin/bash\n"),
        "group": File(b"root:x:0:\nusers:x:100:\n"),
        "shadow": File(b"root:*:19000:0:99999:7:::\n", mode=0o640),
        "gshadow": File(b"root:*::\nusers:*::\n", mode=0o640),
        "skel": Dir({".profile": File(b"umask 022\n")}),
    }), "home": HOME}),
    Dir({"src": SOURCE, "shared": SHARED, "project": PROJECT}),
]

DROP_EVERY = 0.02  # seconds between two drops of the kernel's cached names and inodes

ENV = {
    # the tests' Python first: the scripts' python3 writes bytecode for the same version in both mounts
    "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/nonexistent",
    "LC_ALL": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@example.org", "GIT_AUTHOR_DATE": "2001-09-09T01:46:40Z",
    "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@example.org", "GIT_COMMITTER_DATE": "2001-09-09T01:46:40Z",
}

# Each: the shell script (run with `bash -eu` in the mount), what it must print.
SCRIPTS = {
    # A repository made over a lower tree: committed twice, checked out, stashed, packed, checked.
    "git": ("""
        cp -a src repo && cd repo
        git -c init.defaultBranch=main init -q .
        git config pack.threads 1 && git config gc.auto 0
        git add -A && git commit -qm first
        echo changed >> notes.txt && git mv pkg/mod.py pkg/module.py && git commit -qam second
        git checkout -q HEAD~1 && test -e pkg/mod.py && git checkout -q main && git stash list
        echo uncommitted >> README && git stash -q && git stash pop -q && git checkout -- README
        git gc -q --aggressive --prune=now && git repack -adq && git fsck --no-progress 2>&1
        git log --format='%s' && git status --porcelain && git count-objects -v | grep -E '^(count|in-pack)'
        rm .git/index
    """, "second\nfirst\ncount: 0\nin-pack: 17\n"),
    # WAL mode: one process writes in transactions while another reads through the shared-memory map.
    "sqlite": ("""
        python3 - <<'EOF'
import sqlite3, subprocess, sys
db = sqlite3.connect("db.sqlite", timeout=30)
db.execute("pragma journal_mode=wal"); db.execute("create table t(n integer)"); db.commit()
reader = subprocess.Popen([sys.executable, "-c", '''
import sqlite3
db = sqlite3.connect("db.sqlite", timeout=30)
seen = 0
while seen < 2000:
    now = db.execute("select count(*) from t").fetchone()[0]
    assert now >= seen, (now, seen)
    seen = now
print("reader saw", seen)
'''])
for start in range(0, 2000, 50):
    db.executemany("insert into t values (?)", ((n,) for n in range(start, start + 50))); db.commit()
assert reader.wait() == 0
db.execute("pragma wal_checkpoint(truncate)")
db.execute("pragma journal_mode=delete")
print(db.execute("pragma integrity_check").fetchone()[0], db.execute("select sum(n) from t").fetchone()[0])
with open("dump.sql", "w") as out:
    out.writelines(line + "\\n" for line in db.iterdump())
db.close()
EOF
        test ! -e db.sqlite-wal && test ! -e db.sqlite-shm && rm db.sqlite
    """, "reader saw 2000\nok 1999000\n"),
    # Bytecode written next to lower sources (renamed into place), then imported from it.
    "python": ("""
        python3 -m compileall -q src/pkg
        ls src/pkg/__pycache__ src/pkg/sub/__pycache__ | grep -c '\\.pyc$'
        cd src && python3 -c 'import pkg, pkg.sub.deep; print(pkg.VALUE + 1, pkg.sub.deep.DEEP, pkg.__cached__ is not None)'
    """, "3\n42 deep True\n"),
    # Archive, copy and edit lower trees, then remove and move what is left.
    "tools": ("""
        tar -C src -cf /dev/stdout . | { mkdir untarred && tar -C untarred -xpf -; }
        cp -a src copied
        sed -i 's/old/new/' etc/conf && sed -i '2d' copied/notes.txt
        chmod -R go-rwx src/pkg && touch -r src/README src/bin/tool
        ln src/README src/readme-too && setfacl -m u:1000:r src/notes.txt
        flock src/README -c 'echo locked'
        find untarred -name '*.py' -delete
        rm -rf src/pkg/sub && mv src/pkg src/package && mv copied/bin untarred/bin2
        cat etc/conf copied/notes.txt && getfacl -cn src/notes.txt | grep -c 1000
    """, "locked\nkey=new\none\nthree\n1\n"),
    # A C project of a lower layer built, changed, built again and cleaned: objects, an archive, a
    # linked and stripped program (written through a temporary file renamed over it), the
    # compiler's temporary files in the mount; then zipped and unzipped, patched and edited in place.
    "build": ("""
        export TMPDIR=$PWD/tmp && mkdir tmp && cd project
        make && ./demo
        sed -i 's/41/42/' lib.c && make && ./demo
        zip -qr ../project.zip . && rm -f lib.c && unzip -q ../project.zip lib.c && make -W lib.c -s && ./demo
        unzip -Z1 ../project.zip | sort | tr '\\n' ' ' && echo && rm ../project.zip  # its times are each run's own
        patch -p1 <<'EOF'
--- a/NOTES
+++ b/NOTES
@@ -1,2 +1,2 @@
 first
-second
+patched
--- a/OLD
+++ /dev/null
@@ -1 +0,0 @@
-old
--- /dev/null
+++ b/NEW
@@ -0,0 +1 @@
+new
EOF
        perl -i.orig -pe 's/first/FIRST/' NOTES && cat NOTES NOTES.orig NEW && test ! -e OLD
        make -s clean && ls && rmdir ../tmp
    """, "cc -O1 -c main.c -o main.o\ncc -O1 -c lib.c -o lib.o\nar rcs libdemo.a lib.o\n"
         "cc -o demo main.o libdemo.a\nstrip demo\n41\n"
         "cc -O1 -c lib.c -o lib.o\nar rcs libdemo.a lib.o\ncc -o demo main.o libdemo.a\nstrip demo\n42\n42\n"
         "Makefile NOTES OLD demo lib.c lib.h lib.o libdemo.a main.c main.o \n"
         "patching file NOTES\npatching file OLD\npatching file NEW\n"
         "FIRST\npatched\nfirst\npatched\nnew\n"
         "Makefile\nNEW\nNOTES\nNOTES.orig\nlib.c\nlib.h\nmain.c\n"),
    # A lower tree updated from a changed copy (temporary files renamed over lower ones, hard links,
    # xattrs, ACLs, removals), then in place, then snapshotted as hard links to its lower files.
    "rsync": ("""
        cp -a src new && echo changed >> new/README && touch -d @1000000300 new/README
        rm -r new/pkg/sub && mkdir new/added && echo a > new/added/f && chmod 700 new/bin
        setfattr -n user.note -v new new/notes.txt
        rsync -aHAX --delete --itemize-changes new/ src/
        echo again >> new/README && touch -d @1000000600 new/README
        rsync -aHAX --inplace --itemize-changes new/README src/README
        rsync -aHAX --link-dest="$PWD/src" src/ snap/
        stat -c '%h %n' snap/README snap/notes.txt snap/twin src/twin
        getfattr --only-values -n user.note src/twin && echo
    """, ".d..t...... ./\n*deleting   pkg/sub/deep.py\n*deleting   pkg/sub/data.bin\n*deleting   pkg/sub/\n"
         ">f.st...... README\n.f........x notes.txt\nhf........x twin\ncd+++++++++ added/\n>f+++++++++ added/f\n"
         ".d...p..... bin/\n.d..t...... pkg/\n"
         ">f.st...... README\n"
         # as on overlayfs, the lower file's copy-up leaves its other name (twin) a file of its own
         "2 snap/README\n2 snap/notes.txt\n2 snap/twin\n2 src/twin\nkept\n"),
    # Accounts added, changed and removed in a lower /etc: each file written to a temporary name and
    # renamed over the old one after a backup, under a lock file made by a hard link.
    "accounts": ("""
        groupadd -P "$PWD" -g 3000 team
        useradd -P "$PWD" -m -k "$PWD/etc/skel" -K HOME_MODE=0700 -u 2000 -g team -s /bin/sh bob
        usermod -P "$PWD" -c 'Bob B' -aG users bob && echo 'export A=1' >> home/bob/.profile
        cat etc/passwd etc/group && ls -A home/bob && stat -c '%u:%g %a' home/bob home/bob/.profile
        userdel -P "$PWD" -r bob 2>/dev/null && groupdel -P "$PWD" team
        cat etc/group etc/passwd- && ls etc | grep -c -e - && test ! -e home/bob && ls etc/*.lock 2>/dev/null | wc -l
    """, "root:x:0:0:root:/root:/bin/bash\nbob:x:2000:3000:Bob B:/home/bob:/bin/sh\n"
         "root:x:0:\nusers:x:100:bob\nteam:x:3000:\n"
         ".profile\n2000:3000 700\n2000:3000 644\n"
         "root:x:0:\nusers:x:100:\nroot:x:0:0:root:/root:/bin/bash\nbob:x:2000:3000:Bob B:/home/bob:/bin/sh\n4\n0\n"),
    # A user at work in a home directory of a lower layer, and in a sticky directory shared with root.
    "user": ("""
        setpriv --reuid=1000 --regid=1000 --clear-groups bash -euc '
            cd home && cp -a docs docs.bak && mv docs/a docs/b && rm -rf docs.bak docs/old
            echo more >> notes && chmod 600 notes && mkdir -p new/deeper && touch new/deeper/file
            rm -f from-root && echo removed the root file in my directory
            rm -f ../shared/roots 2>/dev/null || echo kept the root file in the sticky directory
            ln ../shared/roots mine 2>/dev/null || echo no link to the root file
            mv ../shared/users ../shared/moved && echo moved my file
            cat ../etc/conf >> notes && ! (echo x >> ../etc/conf) 2>/dev/null && echo read only
        '
        cat home/notes && stat -c '%u %a %n' home/notes home/new home/docs/b shared/moved
    """, "removed the root file in my directory\nkept the root file in the sticky directory\nno link to the root file\n"
         "moved my file\nread only\nmine\nmore\nkey=old\n"
         "1000 600 home/notes\n1000 755 home/new\n1000 644 home/docs/b\n1000 644 shared/moved\n"),
    # Shared mappings of a lower file, a socket and a fifo, each used by two processes.
    "ipc": ("""
        python3 - <<'EOF'
import mmap, os, socket, subprocess, sys
with open("src/pkg/sub/data.bin", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
    m[0:4] = b"MMAP"
    m[-4:] = b"TAIL"
    child = 'import mmap; f = open("src/pkg/sub/data.bin", "rb"); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); print(bytes(m[0:4]), bytes(m[-4:]))'
    subprocess.run([sys.executable, "-c", child], check=True)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind("src/sock"); server.listen(1)
client = subprocess.Popen([sys.executable, "-c", 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("src/sock"); s.sendall(b"over the socket")'])
conn, _ = server.accept(); print(conn.recv(100).decode(), flush=True); client.wait(); conn.close(); server.close()
os.mkfifo("src/fifo")
writer = subprocess.Popen(["sh", "-c", "echo through the fifo > src/fifo"])
with open("src/fifo") as fifo:
    print(fifo.read().strip(), flush=True)
writer.wait()
os.unlink("src/fifo")
EOF
        test -S src/sock && rm src/sock && head -c 4 src/pkg/sub/data.bin && echo
    """, "b'MMAP' b'TAIL'\nover the socket\nthrough the fifo\nMMAP\n"),
}


@pytest.mark.parametrize("program", list(SCRIPTS))
def test_a_program_leaves_what_it_leaves_on_overlayfs(tmp_path: Path, program: str) -> None:
    script, printed = SCRIPTS[program]
    with pair(tmp_path, LOWERS) as p:
        run_in_both(p, program, script, printed)


def run_in_both(p: Pair, program: str, script: str, printed: str) -> None:
    """script run by bash in each mount: it must succeed and print ``printed`` in both,
    and leave the same views and upper layers. Meanwhile the kernel keeps forgetting
    the names and inodes it cached (DROP_EVERY), so that the driver serves the
    program's files through lookups of names the kernel forgot, as under memory
    pressure."""
    for mnt in (p.kernel.mnt, p.driver.mnt):
        with CachesDropped(DROP_EVERY):
            run = subprocess.run(["bash", "-euc", script], cwd=mnt, env=ENV, capture_output=True, text=True, timeout=300)
        p.log.append(f"{program} in {mnt.name}: exit {run.returncode}, printed {run.stdout!r}, stderr {run.stderr!r}")
        assert (run.returncode, run.stdout) == (0, printed), p.log[-1]
    p.check()


def build_deb(work: Path, version: int) -> Path:
    """Version 1 of a package ships a file that version 2 drops; both ship a conffile."""
    tree = work / f"demo-{version}"
    for directory in ("DEBIAN", "usr/share/demo", "etc/demo"):
        (tree / directory).mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: demo\nVersion: {version}\nArchitecture: all\nMaintainer: a <a@example.org>\nDescription: demo\n")
    (tree / "DEBIAN/conffiles").write_text("/etc/demo/conf\n")
    (tree / "usr/share/demo/data").write_text(f"data {version}\n" * 100)
    (tree / "etc/demo/conf").write_text(f"conf {version}\n")
    if version == 1:
        (tree / "usr/share/demo/dropped").write_text("only in 1\n")
    deb = work / f"demo_{version}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", tree, deb], check=True, capture_output=True)
    return deb


def test_dpkg_upgrades_and_purges_a_package_of_a_lower_layer(tmp_path: Path) -> None:
    """dpkg replaces a lower layer's files by renaming new ones over them, after
    linking each old one to a backup name (a hard link to a lower file), and
    rewrites its database the same way."""
    lower = tmp_path / "lower"
    for directory in ("info", "updates", "triggers"):
        (lower / "var/lib/dpkg" / directory).mkdir(parents=True)
    (lower / "var/lib/dpkg/status").touch()
    dpkg = ["dpkg", "--force-script-chrootless"]
    subprocess.run([*dpkg, f"--root={lower}", "-i", build_deb(tmp_path, 1)], check=True, capture_output=True, env=ENV)
    upgrade = build_deb(tmp_path, 2)
    script = f"""
        {" ".join(dpkg)} --root="$PWD" -i {upgrade} >/dev/null
        cat usr/share/demo/data | sort -u && test ! -e usr/share/demo/dropped
        {" ".join(dpkg)} --root="$PWD" --status demo | grep -E '^(Status|Version):'
        {" ".join(dpkg)} --root="$PWD" --purge demo >/dev/null
        test ! -e etc/demo && test ! -e usr/share/demo && echo purged
    """
    with pair_over(tmp_path, [lower]) as p:
        run_in_both(p, "dpkg", script, "data 2\nStatus: install ok installed\nVersion: 2\npurged\n")


def test_update_alternatives_switches_the_links_of_a_lower_layer(tmp_path: Path) -> None:
    """update-alternatives replaces a lower layer's symlinks by renaming new ones
    over them, and rewrites its administrative file the same way."""
    lower = tmp_path / "lower"
    for directory in ("usr/bin", "etc/alternatives", "var/lib/dpkg/alternatives"):
        (lower / directory).mkdir(parents=True)
    for name in ("one", "two"):
        (lower / "usr/bin" / name).write_text(f"#!/bin/sh\necho {name}\n")
        (lower / "usr/bin" / name).chmod(0o755)
    alternatives = ["update-alternatives", "--quiet", "--root"]
    subprocess.run([*alternatives, lower, "--install", "/usr/bin/prog", "prog", "/usr/bin/one", "10"], check=True, env=ENV)
    script = f"""
        {" ".join(alternatives)} "$PWD" --install /usr/bin/prog prog /usr/bin/two 20
        readlink etc/alternatives/prog usr/bin/prog && ".$(readlink etc/alternatives/prog)"
        {" ".join(alternatives)} "$PWD" --set prog /usr/bin/one && readlink etc/alternatives/prog
        {" ".join(alternatives)} "$PWD" --remove prog /usr/bin/one && readlink etc/alternatives/prog
        {" ".join(alternatives)} "$PWD" --remove-all prog && test ! -L usr/bin/prog && ls etc/alternatives | wc -l
        rm var/log/alternatives.log  # its lines have the time
    """
    with pair_over(tmp_path, [lower]) as p:
        run_in_both(p, "update-alternatives", script, "/usr/bin/two\n/etc/alternatives/prog\ntwo\n/usr/bin/one\n/usr/bin/two\n0\n")


def build_wheel(work: Path, version: int, broken: bool = False) -> Path:
    """A pure-Python wheel: version 1 ships a module that version 2 drops, and data in
    a subpackage; the RECORD lists each file's hash, as a wheel built by a tool does.
    broken: a file and a directory of one name, which pip fails to install after it
    has moved the installed version aside."""
    files = {
        "demo/__init__.py": f"VERSION = {version}\n",
        "demo/data/table.txt": f"row {version}\n" * 50,
        **({"demo/old.py": "OLD = True\n"} if version == 1 else {"demo/new.py": "NEW = True\n"}),
        **({"demo/clash": "a file\n", "demo/clash/inner.py": "\n"} if broken else {}),
        f"demo-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: demo\nVersion: {version}\n",
        f"demo-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"demo-{version}.dist-info/top_level.txt": "demo\n",
    }
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for name, text in files.items()]
    record.append(f"demo-{version}.dist-info/RECORD,,")
    wheel = work / "wheels" / f"demo-{version}-py3-none-any.whl"
    wheel.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"demo-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_pip_upgrades_and_removes_a_package_of_a_lower_virtual_environment(tmp_path: Path) -> None:
    """pip moves a lower package's directories aside (renames of lower directories)
    before it installs the new version, moves them back when that fails, and
    removes them once it worked; its metadata directory goes the same way."""
    lower = tmp_path / "lower"
    lower.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", lower / "venv"], check=True, env=ENV)
    pip = f"{sys.executable} -m pip --python venv/bin/python --disable-pip-version-check --no-cache-dir"
    first = build_wheel(tmp_path, 1)
    build_wheel(tmp_path, 2)
    build_wheel(tmp_path, 3, broken=True)
    subprocess.run(f"{pip} install -q --no-compile --no-deps {first}", shell=True, cwd=lower, check=True, env=ENV)
    install = f"{pip} install -q --no-compile --no-deps --no-index --find-links {first.parent}"
    script = f"""
        ! {install} 'demo==3' 2>/dev/null
        venv/bin/python -B -c 'import demo, demo.old; print(demo.VERSION)' && wc -l < venv/lib/python*/site-packages/demo/data/table.txt
        {install} 'demo==2'
        venv/bin/python -B -c 'import demo, demo.new; print(demo.VERSION)'
        test ! -e venv/lib/python*/site-packages/demo/old.py && ls -d venv/lib/python*/site-packages/demo* | wc -l
        {pip} uninstall -q -y demo
        ls venv/lib/python*/site-packages | grep -c demo || true
    """
    with pair_over(tmp_path, [lower]) as p:
        run_in_both(p, "pip", script, "1\n50\n2\n2\n0\n")


def test_git_clones_and_packs_a_repository_of_a_lower_layer(tmp_path: Path) -> None:
    """A local clone links the objects of a lower repository (hard links to lower
    files, made from another directory); commits go on in both, the lower
    repository's gc packs its loose objects and removes them, and the clone,
    whose links to them must keep their data, then fetches from it and merges."""
    repo = tmp_path / "lower/repo"
    repo.mkdir(parents=True)
    (repo / "notes").write_text("one\n")
    (repo / "code.py").write_text("VALUE = 1\n" * 100)
    subprocess.run("git -c init.defaultBranch=main init -q . && git config gc.auto 0 && git config pack.threads 1"
                   " && git add -A && git commit -qm first && echo two >> notes && git commit -qam second",
                   shell=True, cwd=repo, check=True, env=ENV)
    script = """
        git clone -q --local repo clone && stat -c '%h' clone/.git/objects/??/* | sort | uniq -c
        cd clone && echo 'VALUE = 2' >> code.py && git commit -qam third && cd ..
        cd repo && echo three >> notes && git commit -qam fourth
        git gc -q --prune=now && git count-objects -v | grep -E '^(count|in-pack)' && git fsck --no-progress 2>&1
        cd ../clone && git fsck --no-progress 2>&1 && git fetch -q origin && git merge -q -m merged origin/main
        git log --format=%s && git status --porcelain && tail -n 1 code.py notes
        rm .git/index ../repo/.git/index
        rm -r .git/config .git/FETCH_HEAD .git/logs  # they name the mount's path to the repository
    """
    with pair_over(tmp_path, [tmp_path / "lower"]) as p:
        run_in_both(p, "git clone", script, "      7 2\ncount: 0\nin-pack: 10\nmerged\nthird\nfourth\nsecond\nfirst\n"
                                             "==> code.py <==\nVALUE = 2\n\n==> notes <==\nthree\n")


def test_sqlite_rolls_back_a_transaction_cut_short_in_a_database_of_a_lower_layer(tmp_path: Path) -> None:
    """A lower database written in rollback-journal mode by a process that exits
    mid-transaction, after pages it changed spilled into the (copied-up) file: the
    next connection finds the hot journal, rolls the file back, and goes on."""
    data = tmp_path / "lower/data"
    data.mkdir(parents=True)
    db = sqlite3.connect(data / "app.db")
    db.execute("create table t(n integer primary key, v text)")
    db.executemany("insert into t values (?, ?)", ((n, f"row {n:06d} " * 4) for n in range(10_000)))
    db.commit()
    db.close()
    script = """
        python3 - <<'EOF'
import os, sqlite3
db = sqlite3.connect("data/app.db", isolation_level=None)
db.execute("pragma cache_size=5")  # changed pages spill into the file before the commit
db.execute("begin")
db.execute("update t set v = v || 'changed'")
db.execute("insert into t select n + 100000, v from t where n < 5000")
os._exit(0)  # neither commit nor rollback: the journal stays, hot
EOF
        test -s data/app.db-journal && echo hot journal
        python3 - <<'EOF'
import sqlite3
db = sqlite3.connect("data/app.db")
print(db.execute("pragma integrity_check").fetchone()[0], *db.execute("select count(*), sum(length(v)) from t").fetchone())
db.execute("update t set v = upper(v) where n % 2 = 0"); db.commit()
db.execute("vacuum"); db.close()
EOF
        test ! -e data/app.db-journal && echo rolled back
    """
    with pair_over(tmp_path, [tmp_path / "lower"]) as p:
        run_in_both(p, "sqlite rollback", script, "hot journal\nok 10000 440000\nrolled back\n")
