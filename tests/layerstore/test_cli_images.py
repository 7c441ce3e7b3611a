"""images, inspect, history, system df and prune through the command line, on images made by umoci.

Four images are built once per test run with umoci and exported with skopeo:
``base`` (one layer), ``app1`` and ``app2`` (base's layer plus one of their
own) and the unrelated ``lone``. Each test loads the archives into a store of
its own when it changes it, or shares one loaded store when it only reads.
"""
from __future__ import annotations

import hashlib
import json
import os
import pty
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from layerstore.formatting import created_since, human_size, human_size4
from layerstore.store import Store
from test_unpack import entry, make_tar, sha256

REPO = Path(__file__).resolve().parents[2]
LONG_STEP = "COPY base.bin /srv/base.bin # a command line that is longer than forty-five characters"

pytestmark = pytest.mark.skipif(not (shutil.which("umoci") and shutil.which("skopeo")), reason="needs umoci and skopeo")


def _sh(*cmd: str | Path, cwd: Path | None = None) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, cwd=cwd)


@dataclass(frozen=True)
class Archives:
    base: Path
    app1: Path
    app2: Path
    lone: Path
    app1_oci: Path

    @property
    def docker(self) -> tuple[Path, ...]:
        return (self.base, self.app1, self.app2, self.lone)


def _add_layer(layout: Path, tag: str, work: Path, files: dict[str, int], created: str, step: str) -> None:
    bundle = work / f"bundle-{tag}"
    rootless = () if os.geteuid() == 0 else ("--rootless",)
    _sh("umoci", "unpack", *rootless, "--image", f"{layout}:{tag}", bundle)
    for name, size in files.items():
        path = bundle / "rootfs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(i % 251 for i in range(size)))
    _sh("umoci", "repack", "--image", f"{layout}:{tag}", "--history.created", created, "--history.created_by", step, bundle)
    shutil.rmtree(bundle)


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    work = tmp_path_factory.mktemp("images")
    layout = work / "layout"
    _sh("umoci", "init", "--layout", layout)
    # base: a label (an empty-layer history entry), then one layer
    _sh("umoci", "new", "--image", f"{layout}:base")
    _sh("umoci", "config", "--image", f"{layout}:base", "--config.label", "tier=base",
        "--history.created", "2024-01-01T00:00:00Z", "--history.created_by", "LABEL tier=base")
    _add_layer(layout, "base", work, {"srv/base.bin": 100_000}, "2024-01-01T00:00:01Z", LONG_STEP)
    _sh("umoci", "config", "--image", f"{layout}:base", "--created", "2024-01-01T00:00:02Z", "--no-history")
    # app1, app2: base's layer and one of their own
    for name, label, size, month in (("app1", "one", 50_000, "02"), ("app2", "two", 20_000, "03")):
        _sh("umoci", "tag", "--image", f"{layout}:base", name)
        _add_layer(layout, name, work, {f"srv/{name}.bin": size}, f"2024-{month}-01T00:00:00Z", f"COPY {name}.bin /srv/")
        _sh("umoci", "config", "--image", f"{layout}:{name}", "--config.label", f"app={label}", "--author", "someone",
            "--created", f"2024-{month}-01T00:00:01Z", "--history.created", f"2024-{month}-01T00:00:01Z",
            "--history.created_by", f"LABEL app={label}", "--history.comment", "labelled")
    # lone: nothing in common with the others, and the oldest
    _sh("umoci", "new", "--image", f"{layout}:lone")
    _add_layer(layout, "lone", work, {"lone.bin": 5_000}, "2023-06-01T00:00:00Z", "COPY lone.bin /")
    _sh("umoci", "config", "--image", f"{layout}:lone", "--created", "2023-06-01T00:00:01Z", "--no-history")

    def export(tag: str, name: str, *extra: str) -> Path:
        out = work / f"{tag}.tar"
        _sh("skopeo", "copy", "-q", f"oci:{layout}:{tag}", f"docker-archive:{out}:{name}", *extra)
        return out

    app1_oci = work / "app1.oci.tar"
    _sh("skopeo", "copy", "-q", f"oci:{layout}:app1", f"oci-archive:{app1_oci}:example/app:oci")
    return Archives(
        export("base", "example/base:latest"),
        export("app1", "example/app:1.0"),
        export("app2", "example/app:2.0", "--additional-tag", "other/name:latest"),
        export("lone", "example/lone:latest"),
        app1_oci,
    )


@dataclass(frozen=True)
class Loaded:
    root: Path
    ids: dict[str, str]  # base, app1, app2, lone -> image ID
    layers: dict[str, list[str]]  # -> diff_ids
    sizes: dict[str, int]  # diff_id -> size

    def size(self, image: str) -> int:
        return sum(self.sizes[d] for d in self.layers[image])


def load(root: Path, archives: Archives) -> Loaded:
    ids: dict[str, str] = {}
    with Store(root) as store:
        for name, path in zip(("base", "app1", "app2", "lone"), archives.docker):
            (image,) = store.load(str(path))
            ids[name] = image.id
        layers = {name: store.image_layers(i) for name, i in ids.items()}
        sizes = {str(r["diff_id"]): int(r["size"]) for r in store.meta.query("SELECT diff_id, size FROM layers")}
    return Loaded(root, ids, layers, sizes)


@pytest.fixture(scope="session")
def shared(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    """A store that tests only read."""
    return load(tmp_path_factory.mktemp("shared") / "store", archives)


@pytest.fixture
def own(archives: Archives, tmp_path: Path) -> Loaded:
    """A store for one test to change."""
    return load(tmp_path / "store", archives)


def cli(root: Path, *args: str, stdin: int | None = subprocess.DEVNULL, tz: str = "UTC",
        docker_config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": tz, "PYTHONPATH": str(REPO)}
    if docker_config is not None:
        env["DOCKER_CONFIG"] = str(docker_config)
    return subprocess.run(
        [sys.executable, "-m", "layerstore", "--root", str(root), *args],
        capture_output=True, text=True, cwd=REPO, env=env, stdin=stdin, timeout=60, check=False,
    )


def ok(root: Path, *args: str) -> str:
    proc = cli(root, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def fail(root: Path, *args: str) -> str:
    proc = cli(root, *args)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def table(rows: list[list[str]]) -> str:
    """The expected layout: each column as wide as its widest cell plus 3, at least 10; the last one unpadded."""
    widths = [max(10, max(len(r[i]) for r in rows) + 3) for i in range(len(rows[0]) - 1)]
    return "".join("".join(c.ljust(w) for c, w in zip(r, widths)) + r[-1] + "\n" for r in rows)


def short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def unix(text: str) -> int:
    from layerstore.formatting import parse_time

    t = parse_time(text)
    assert t is not None
    return t.unix


CREATED = {"base": "2024-01-01T00:00:02Z", "app1": "2024-02-01T00:00:01Z", "app2": "2024-03-01T00:00:01Z", "lone": "2023-06-01T00:00:01Z"}


# -- images ----------------------------------------------------------------------------


def test_images_table_newest_first_one_row_per_tag(shared: Loaded) -> None:
    rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]]
    for name, repo, tag in (("app2", "example/app", "2.0"), ("app2", "other/name", "latest"), ("app1", "example/app", "1.0"),
                            ("base", "example/base", "latest"), ("lone", "example/lone", "latest")):
        rows.append([repo, tag, short(shared.ids[name]), created_since(unix(CREATED[name])), human_size(shared.size(name))])
    assert ok(shared.root, "images") == table(rows)
    assert ok(shared.root, "image", "ls") == table(rows)
    assert ok(shared.root, "images", "-a") == table(rows)


def test_images_sizes_are_layer_sums(shared: Loaded) -> None:
    base_layer = shared.layers["base"][0]
    assert shared.layers["app1"][0] == base_layer == shared.layers["app2"][0]
    assert shared.size("app1") == shared.sizes[base_layer] + shared.sizes[shared.layers["app1"][1]]
    assert shared.sizes[base_layer] >= 100_000
    out = ok(shared.root, "images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}", "example/base")
    assert out == f"example/base:latest {human_size(shared.size('base'))}\n"


def test_images_quiet_lists_each_id_once(shared: Loaded) -> None:
    out = ok(shared.root, "images", "-q").split()
    assert out == [short(shared.ids[n]) for n in ("app2", "app1", "base", "lone")]
    full = ok(shared.root, "images", "-q", "--no-trunc").split()
    assert full == [shared.ids[n] for n in ("app2", "app1", "base", "lone")]


def test_images_no_trunc(shared: Loaded) -> None:
    out = ok(shared.root, "images", "--no-trunc", "example/lone")
    assert out.splitlines()[1].split()[2] == shared.ids["lone"]
    assert shared.ids["lone"].startswith("sha256:") and len(shared.ids["lone"]) == 71


def _names(root: Path, *args: str) -> list[str]:
    return ok(root, "images", "--format", "{{.Repository}}:{{.Tag}}", *args).splitlines()


def test_images_filters(shared: Loaded) -> None:
    everything = ["example/app:2.0", "other/name:latest", "example/app:1.0", "example/base:latest", "example/lone:latest"]
    assert _names(shared.root) == everything
    assert _names(shared.root, "-f", "dangling=true") == []
    assert _names(shared.root, "-f", "dangling=false") == everything
    assert _names(shared.root, "-f", "before=example/app:1.0") == ["example/base:latest", "example/lone:latest"]
    assert _names(shared.root, "-f", f"since={short(shared.ids['base'])}") == ["example/app:2.0", "other/name:latest", "example/app:1.0"]
    assert _names(shared.root, "-f", "since=example/lone", "-f", "before=example/app:2.0") == ["example/app:1.0", "example/base:latest"]
    assert _names(shared.root, "-f", "reference=example/*") == ["example/app:2.0", "example/app:1.0", "example/base:latest", "example/lone:latest"]
    assert _names(shared.root, "-f", "reference=*/name:latest") == ["other/name:latest"]
    assert _names(shared.root, "-f", "reference=*/*:2.?", "-f", "reference=example/lone") == ["example/app:2.0", "example/lone:latest"]
    assert _names(shared.root, "-f", "reference=docker.io/example/base:latest") == ["example/base:latest"]
    assert _names(shared.root, "-f", "label=tier") == ["example/app:2.0", "other/name:latest", "example/app:1.0", "example/base:latest"]
    assert _names(shared.root, "-f", "label=app") == ["example/app:2.0", "other/name:latest", "example/app:1.0"]
    assert _names(shared.root, "-f", "label=app=two") == ["example/app:2.0", "other/name:latest"]
    assert _names(shared.root, "-f", "label=app=one", "-f", "label=tier=base") == ["example/app:1.0"]
    assert _names(shared.root, "-f", "label=app=three") == []
    assert _names(shared.root, "-f", "until=2024-01-15T00:00:00Z") == ["example/base:latest", "example/lone:latest"]


def _one_image_layout(path: Path, name: str, created: str | None, history: list[dict[str, object]] | None = None) -> Path:
    """An OCI layout of one image with one layer, its config ``created`` as given (or none), and ``history``."""
    layer = make_tar([entry(f"{name}.txt", data=name.encode())])
    config: dict[str, object] = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}
    if created is not None:
        config["created"] = created
    if history is not None:
        config["history"] = history

    def blob(data: bytes) -> dict[str, object]:
        (path / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        (path / "blobs/sha256" / sha256(data)[7:]).write_bytes(data)
        return {"digest": sha256(data), "size": len(data)}

    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(json.dumps(config).encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}]}
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
             **blob(json.dumps(manifest).encode()), "annotations": {"io.containerd.image.name": f"example/{name}:latest"}}]}
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return path


def test_before_and_since_compare_created_times_alone_as_dockerd(tmp_path: Path) -> None:
    """Images created at the same instant (reproducible builds) are neither before nor since each other,
    whichever was loaded first; one without a created time passes no such filter and bounds none."""
    root = tmp_path / "store"
    same = "2024-05-01T00:00:00Z"
    for name, created in (("twin-b", same), ("twin-a", same), ("undated", None), ("older", "2024-04-01T00:00:00Z")):
        ok(root, "load", "-q", "-i", str(_one_image_layout(tmp_path / name, name, created)))
    assert _names(root, "-f", "before=example/twin-a") == ["example/older:latest"]
    assert _names(root, "-f", "since=example/twin-b") == []
    assert _names(root, "-f", "since=example/older") == ["example/twin-a:latest", "example/twin-b:latest"]
    assert _names(root, "-f", "until=2024-06-01T00:00:00Z") == ["example/twin-a:latest", "example/twin-b:latest", "example/older:latest"]
    assert len(_names(root, "-f", "before=example/undated")) == 4  # no created time: no bound


def test_images_positional_reference(shared: Loaded) -> None:
    assert _names(shared.root, "example/app") == ["example/app:2.0", "example/app:1.0"]
    assert _names(shared.root, "example/app:1.0") == ["example/app:1.0"]  # only the matching tag's row
    assert _names(shared.root, "example/app:9") == []
    assert ok(shared.root, "images", "nothing/here") == table([["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]])


def test_images_filter_errors(shared: Loaded) -> None:
    assert fail(shared.root, "images", "-f", "colour=red") == "Error: invalid filter 'colour'\n"
    assert fail(shared.root, "images", "-f", "dangling=maybe") == "Error: invalid filter 'dangling=maybe'\n"
    assert fail(shared.root, "images", "-f", "dangling") == "Error: bad format of filter (expected name=value)\n"
    assert fail(shared.root, "images", "-f", "before=nothing:here") == "Error: No such image: nothing:here\n"
    assert "syntax error in pattern" in fail(shared.root, "images", "-f", "reference=ex[ample")


def test_images_format_templates(shared: Loaded) -> None:
    out = ok(shared.root, "images", "--format", "table {{.ID}}\\t{{.Tag}}", "example/app")
    assert out == table([["IMAGE ID", "TAG"], [short(shared.ids["app2"]), "2.0"], [short(shared.ids["app1"]), "1.0"]])
    out = ok(shared.root, "images", "--format", "{{.ID}}|{{upper .Tag}}|{{.CreatedAt}}", "example/base")
    assert out == f"{short(shared.ids['base'])}|LATEST|2024-01-01 00:00:02 +0000 UTC\n"
    out = ok(shared.root, "images", "--format", "table {{.Repository}}:{{.Tag}}\\t{{.CreatedAt}}\\t{{.Digest}}", "example/lone")
    assert out == table([["REPOSITORY:TAG", "CREATED AT", "DIGEST"], ["example/lone:latest", "2023-06-01 00:00:01 +0000 UTC", "<none>"]])


def test_images_format_json(shared: Loaded) -> None:
    lines = ok(shared.root, "images", "--format", "json").splitlines()
    assert len(lines) == 5
    docs = [json.loads(line) for line in lines]
    keys = ["Containers", "CreatedAt", "CreatedSince", "Digest", "ID", "Repository", "SharedSize", "Size", "Tag", "UniqueSize", "VirtualSize"]
    assert all(list(d) == keys for d in docs)
    app1 = docs[2]
    assert (app1["Repository"], app1["Tag"], app1["ID"], app1["Digest"]) == ("example/app", "1.0", short(shared.ids["app1"]), "<none>")
    assert app1["SharedSize"] == human_size4(shared.sizes[shared.layers["base"][0]])
    assert app1["UniqueSize"] == human_size4(shared.sizes[shared.layers["app1"][1]])
    assert app1["Size"] == human_size(shared.size("app1")) and app1["Containers"] == "0"
    assert lines[0].startswith('{"Containers":"0","CreatedAt":"2024-03-01 00:00:01 +0000 UTC",')
    assert ok(shared.root, "images", "--format", "{{json .}}") == "\n".join(lines) + "\n"


def raw_blocks(text: str) -> list[dict[str, str]]:
    """``--format raw``: ``key: value`` lines, each block ended by a blank line."""
    assert text.endswith("\n\n"), text
    blocks = []
    for block in text[:-2].split("\n\n"):
        pairs = [line.split(":", 1) for line in block.split("\n")]
        assert all(len(p) == 2 for p in pairs), block
        blocks.append({k: v.removeprefix(" ") for k, v in pairs})
    return blocks


def test_images_format_raw_is_dockers_key_value_blocks(shared: Loaded) -> None:
    """Docker's RawFormatKey: per row repository, tag, (digest,) image_id, created_at and
    virtual_size, which are Repository, Tag, (Digest,) ID, CreatedAt and Size."""
    docs = [json.loads(line) for line in ok(shared.root, "images", "--format", "json").splitlines()]
    fields = {"repository": "Repository", "tag": "Tag", "image_id": "ID", "created_at": "CreatedAt", "virtual_size": "Size"}
    blocks = raw_blocks(ok(shared.root, "images", "--format", "raw"))
    assert [list(b) for b in blocks] == [list(fields)] * len(docs) == [list(fields)] * 5
    assert blocks == [{k: d[f] for k, f in fields.items()} for d in docs]
    digests = raw_blocks(ok(shared.root, "images", "--format", "raw", "--digests", "--no-trunc", "example/lone"))
    assert digests == [{"repository": "example/lone", "tag": "latest", "digest": "<none>", "image_id": shared.ids["lone"],
                        "created_at": "2023-06-01 00:00:01 +0000 UTC", "virtual_size": human_size(shared.size("lone"))}]
    # -q: one line per image, each ID once (app2 has two names)
    assert ok(shared.root, "images", "--format", "raw", "-q").splitlines() == [
        f"image_id: {short(shared.ids[name])}" for name in ("app2", "app1", "base", "lone")
    ]


def test_images_unknown_template_field(shared: Loaded) -> None:
    err = fail(shared.root, "images", "--format", "{{.Nope}}")
    assert "can't evaluate field Nope" in err and err.startswith("Error: template parsing error: template: :1:2:")
    assert "function \"nope\" not defined" in fail(shared.root, "images", "--format", "{{nope .ID}}")


def test_images_digests(own: Loaded, archives: Archives) -> None:
    root = own.root
    assert ok(root, "images", "--digests", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}", "example/app") == (
        "example/app:2.0 <none>\nexample/app:1.0 <none>\n"  # docker-archives carry no manifest: none recorded
    )
    ok(root, "load", "-i", str(archives.app1_oci))  # the same image again, from an OCI archive with its manifest
    with Store(root) as store:
        (manifest,) = [str(r["digest"]) for r in store.meta.query("SELECT digest FROM manifests WHERE image_id = ? AND synthetic = 0", own.ids["app1"])]
        with store.meta.transaction() as tx:
            tx.execute("INSERT INTO repo_digests VALUES (?, ?, ?)", ("other/name", "sha256:" + "ab" * 32, own.ids["app2"]))
    out = ok(root, "images", "--digests")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED", "SIZE"]
    by_name = {(r[0], r[1]): r[2] for r in rows[1:]}
    assert by_name[("example/app", "1.0")] == manifest
    assert by_name[("example/app", "oci")] == manifest
    assert by_name[("example/app", "2.0")] == "<none>"
    assert by_name[("other/name", "latest")] == "sha256:" + "ab" * 32
    assert by_name[("example/base", "latest")] == "<none>"
    header = out.splitlines()[0]
    assert header.index("IMAGE ID") == out.splitlines()[1].index(short(own.ids["app2"]))
    # a custom table gets the digest column appended, as Docker does
    out = ok(root, "images", "--digests", "--format", "table {{.Tag}}", "example/app:1.0")
    assert out == table([["TAG", "DIGEST"], ["1.0", manifest]])
    # without --digests, digests are looked up for "{{.Digest}}" spelled so only (Docker's needDigest)
    assert ok(root, "images", "--format", "{{.Tag}} {{.Digest}}", "example/app:1.0") == f"1.0 {manifest}\n"
    assert ok(root, "images", "--format", "{{.Tag}} {{ .Digest }}", "example/app:1.0") == "1.0 <none>\n"
    # two digests of one repository: a row for each with each of its tags (Docker's imageFormatTaggedAndDigest);
    # recorded repository digests take the place of the stored manifest's
    pulled = ["sha256:" + c * 64 for c in "cd"]
    with Store(root) as store, store.meta.transaction() as tx:
        for digest in pulled:
            tx.execute("INSERT INTO repo_digests VALUES (?, ?, ?)", ("example/app", digest, own.ids["app1"]))
    rows = ok(root, "images", "--digests", "--format", "{{.Tag}} {{.Digest}}", "example/app").splitlines()
    assert rows == ["2.0 <none>", *(f"{tag} {d}" for tag in ("1.0", "oci") for d in pulled)]


def test_images_format_from_docker_config(shared: Loaded, tmp_path: Path) -> None:
    """config.json's imagesFormat, as docker images takes it: when no --format is given and not
    with -q; a file that cannot be read is a warning, and the default table is used."""
    (tmp_path / "config.json").write_text(json.dumps({"imagesFormat": "table {{.Repository}}:{{.Tag}}"}))
    proc = cli(shared.root, "images", "example/app", docker_config=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "REPOSITORY:TAG\nexample/app:2.0\nexample/app:1.0\n", "")
    quiet = cli(shared.root, "images", "-q", "example/app:1.0", docker_config=tmp_path)
    assert (quiet.returncode, quiet.stdout) == (0, short(shared.ids["app1"]) + "\n")
    given = cli(shared.root, "images", "--format", "{{.Tag}}", "example/app", docker_config=tmp_path)
    assert (given.returncode, given.stdout) == (0, "2.0\n1.0\n")
    (tmp_path / "config.json").write_text("{not json")
    broken = cli(shared.root, "images", "example/app", docker_config=tmp_path)
    assert broken.returncode == 0 and broken.stdout == ok(shared.root, "images", "example/app")
    assert broken.stderr.startswith(f"WARNING: Error loading config file: {tmp_path / 'config.json'}: malformed JSON")
    assert broken.stderr.count("\n") == 1


def test_untagged_image_shows_none(own: Loaded) -> None:
    ok(own.root, "tag", "example/base:latest", "example/lone:latest")  # moves lone's only name away
    out = ok(own.root, "images", "--format", "{{.Repository}} {{.Tag}} {{.ID}}", "-f", "dangling=true")
    assert out == f"<none> <none> {short(own.ids['lone'])}\n"
    assert short(own.ids["lone"]) not in ok(own.root, "images", "-f", "dangling=false", "-q")
    assert short(own.ids["lone"]) not in ok(own.root, "images", "example/*", "-q")


# -- inspect ---------------------------------------------------------------------------


INSPECT_KEYS = ["Id", "RepoTags", "RepoDigests", "Parent", "Comment", "Created", "DockerVersion", "Author", "Config",
                "Architecture", "Os", "Size", "GraphDriver", "RootFS", "Metadata", "Layers"]


def test_inspect_json(shared: Loaded) -> None:
    out = ok(shared.root, "inspect", "example/app:2.0")
    assert out.startswith('[\n    {\n        "Id": ')  # Docker's four-space indent
    (doc,) = json.loads(out)
    assert list(doc) == INSPECT_KEYS
    assert doc["Id"] == shared.ids["app2"]
    assert doc["RepoTags"] == ["example/app:2.0", "other/name:latest"]
    assert doc["RepoDigests"] == [] and doc["Parent"] == "" and doc["DockerVersion"] == ""
    assert doc["Author"] == "someone" and doc["Created"] == "2024-03-01T00:00:01Z"
    assert doc["Config"]["Labels"] == {"app": "two", "tier": "base"}
    assert doc["Size"] == shared.size("app2")
    assert doc["RootFS"] == {"Type": "layers", "Layers": shared.layers["app2"]}
    assert doc["Metadata"] == {"LastTagTime": "0001-01-01T00:00:00Z"}
    assert doc["GraphDriver"]["Name"] == "unionfs"
    assert doc["GraphDriver"]["Data"]["UpperDir"].endswith(shared.layers["app2"][1].removeprefix("sha256:"))
    assert doc["GraphDriver"]["Data"]["LowerDir"].endswith(shared.layers["app2"][0].removeprefix("sha256:"))
    (lone,) = json.loads(ok(shared.root, "inspect", "example/lone"))  # one layer: no lower directories
    assert list(lone["GraphDriver"]["Data"]) == ["UpperDir"]


def test_inspect_escapes_html_characters_as_docker_does(tmp_path: Path) -> None:
    """Go's JSON encoder writes <, > and & as \\u003c, \\u003e and \\u0026, and docker inspect shows them so."""
    root = tmp_path / "store"
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(make_tar([entry("a.txt", data=b"a")]))
    ok(root, "import", "-c", "LABEL note=<a&b>", str(tarball), "example/marked")
    out = ok(root, "inspect", "example/marked")
    assert '"note": "\\u003ca\\u0026b\\u003e"' in out
    assert json.loads(out)[0]["Config"]["Labels"] == {"note": "<a&b>"}


def test_inspect_size_counts_the_unpacked_layers_not_their_blobs(archives: Archives, tmp_path: Path) -> None:
    ok(tmp_path, "load", "-q", "-i", str(archives.app1_oci))  # gzip layers, as umoci writes them
    (doc,) = json.loads(ok(tmp_path, "inspect", "example/app:oci"))
    layers = doc["Layers"]
    assert all(layer["CompressedSize"] < layer["Size"] for layer in layers)
    assert doc["Size"] == sum(layer["Size"] for layer in layers)


def test_inspect_layers_and_sharing(shared: Loaded) -> None:
    (doc,) = json.loads(ok(shared.root, "image", "inspect", "example/app:1.0"))
    base, own_layer = doc["Layers"]
    assert list(base) == ["Digest", "MediaType", "CompressedSize", "Size", "DiffID", "ChainID", "SharedBy"]
    assert base["SharedBy"] == 3 and own_layer["SharedBy"] == 1  # base, app1 and app2 have the base layer
    assert [base["DiffID"], own_layer["DiffID"]] == shared.layers["app1"]
    assert base["ChainID"] == base["DiffID"]
    assert own_layer["ChainID"] == "sha256:" + hashlib.sha256(f"{base['ChainID']} {own_layer['DiffID']}".encode()).hexdigest()
    assert base["Size"] == shared.sizes[base["DiffID"]]
    assert base["Digest"].startswith("sha256:") and 0 < base["CompressedSize"]
    assert base["MediaType"].startswith("application/vnd.")
    with Store(shared.root) as store:
        assert store.blobs.has(base["Digest"])


def test_inspect_several_and_missing(shared: Loaded) -> None:
    docs = json.loads(ok(shared.root, "inspect", "example/base", short(shared.ids["lone"])))
    assert [d["Id"] for d in docs] == [shared.ids["base"], shared.ids["lone"]]
    proc = cli(shared.root, "inspect", "example/base", "no/such:image")
    assert proc.returncode == 1
    assert [d["Id"] for d in json.loads(proc.stdout)] == [shared.ids["base"]]  # the found ones are still printed
    assert proc.stderr == "Error: No such object: no/such:image\n"
    # docker inspect looks for any object and names it as given; docker image inspect
    # and --type image pass on the daemon's words, the name normalised with its tag
    proc = cli(shared.root, "inspect", "nope")
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "[]\n", "Error: No such object: nope\n")
    for args in (["image", "inspect"], ["inspect", "--type", "image"]):
        proc = cli(shared.root, *args, "docker.io/library/nope", "example/base")
        assert (proc.returncode, proc.stderr) == (1, "Error: No such image: nope:latest\n")
        assert [d["Id"] for d in json.loads(proc.stdout)] == [shared.ids["base"]]


def test_a_name_that_is_no_name_is_said_so(shared: Loaded) -> None:
    """As dockerd answers: "invalid reference format" for what it cannot read as a name, but
    "No such image" for 64 hex digits that it does not have, which it reads as an image ID."""
    assert fail(shared.root, "rmi", "base:é") == 'Error: reference "base:é": invalid reference format\n'
    assert fail(shared.root, "history", "example/Base") == (
        'Error: reference "example/Base": invalid reference format: repository name (example/Base) must be lowercase\n')
    assert fail(shared.root, "rmi", "f" * 64) == f"Error: No such image: {'f' * 64}\n"


def test_an_image_made_at_gos_zero_time(tmp_path: Path) -> None:
    """Some builders write created 0001-01-01T00:00:00Z, Go's zero time: shown as Docker
    shows it, also in a zone where that instant falls in year 0, and never a traceback."""
    layout = tmp_path / "layout"
    _sh("umoci", "init", "--layout", layout)
    _sh("umoci", "new", "--image", f"{layout}:zero")
    _add_layer(layout, "zero", tmp_path, {"zero.bin": 10}, "0001-01-01T00:00:00Z", "COPY zero.bin /")
    _sh("umoci", "config", "--image", f"{layout}:zero", "--created", "0001-01-01T00:00:00Z", "--no-history")
    archive = tmp_path / "zero.tar"
    _sh("skopeo", "copy", "-q", f"oci:{layout}:zero", f"docker-archive:{archive}:example/zero:latest")
    root = tmp_path / "store"
    assert cli(root, "load", "-q", "-i", str(archive)).returncode == 0
    zone = "America/New_York"  # LMT there, -4:56:02
    images = cli(root, "images", "--format", "{{.CreatedAt}}|{{.CreatedSince}}", tz=zone)
    # no date for the Docker CLI (IsZero): CreatedSince is empty, and the default table says N/A
    assert (images.returncode, images.stdout, images.stderr) == (0, "0000-12-31 19:03:58 -0456 LMT|\n", "")
    table = ok(root, "images").splitlines()
    assert [line.split()[:5] for line in table] == [
        ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED"], ["example/zero", "latest", table[1].split()[2], "N/A", table[1].split()[4]]]
    human = ok(root, "history", "--format", "{{.CreatedSince}}|{{.CreatedBy}}", "example/zero")
    assert human == "N/A|COPY zero.bin /\n"  # a step up to 2000-01-01 has no age, as Docker shows it
    inspect = cli(root, "inspect", "-f", "{{.Created}}", "example/zero", tz=zone)
    assert (inspect.returncode, inspect.stdout, inspect.stderr) == (0, "0001-01-01T00:00:00Z\n", "")
    history = cli(root, "history", "--human=false", "--format", "{{.CreatedAt}}|{{.CreatedBy}}", "example/zero", tz=zone)
    assert (history.returncode, history.stdout, history.stderr) == (0, "0000-12-31T19:03:58-04:56|COPY zero.bin /\n", "")


def test_inspect_format(shared: Loaded) -> None:
    assert ok(shared.root, "inspect", "-f", "{{.Id}}", "example/lone") == shared.ids["lone"] + "\n"
    out = ok(shared.root, "inspect", "--format", '{{json .RepoTags}} {{index .Config.Labels "app"}} {{range .Layers}}{{.SharedBy}},{{end}}', "example/app:2.0")
    assert out == '["example/app:2.0","other/name:latest"] two 3,1,\n'
    assert ok(shared.root, "inspect", "-f", "{{.Size}} {{len .RootFS.Layers}}", "example/base") == f"{shared.size('base')} 1\n"
    err = fail(shared.root, "inspect", "-f", "{{.Nope}}", "example/base")
    assert err == 'Error: template parsing error: template: :1:2: executing "" at <.Nope>: map has no entry for key "Nope"\n'
    # variables, as scripts range over labels and layers
    (doc,) = json.loads(ok(shared.root, "inspect", "example/app:2.0"))
    labels = ok(shared.root, "inspect", "-f", "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}", "example/app:2.0")
    assert labels == "".join(f"{k}={v};" for k, v in sorted(doc["Config"]["Labels"].items())) + "\n" and "app=two;" in labels
    layers = ok(shared.root, "inspect", "-f", '{{$n := len .RootFS.Layers}}{{range $i, $l := .RootFS.Layers}}'
                '{{slice $l 7 12}}{{if lt $i (len (slice $.RootFS.Layers 1))}},{{end}}{{end}} of {{$n}}', "example/app:2.0")
    assert layers == ",".join(d[7:12] for d in doc["RootFS"]["Layers"]) + f" of {len(doc['RootFS']['Layers'])}\n"


def test_inspect_format_reads_fields_an_image_leaves_out_as_zero(shared: Loaded) -> None:
    """Docker runs the template over its typed image first: a field the JSON leaves out
    (omitempty) is there, zero, and a label that is not set is "" (a map[string]string)."""
    fields = ('[{{index .Config.Labels "nope"}}] [{{.Variant}}] [{{.OsVersion}}] {{json .Config.Healthcheck}} '
              '{{.Config.ArgsEscaped}} [{{.Config.StopSignal}}] {{json .Config.OnBuild}} {{.Config.Shell}} '
              '{{len .Config.Volumes}} [{{range .Config.OnBuild}}x{{end}}]')
    assert ok(shared.root, "inspect", "-f", fields, "example/app:2.0") == "[] [] [] null false [] null [] 0 []\n"
    (doc,) = json.loads(ok(shared.root, "inspect", "example/app:2.0"))
    assert not {"Variant", "OsVersion"} & set(doc) and not {"Healthcheck", "OnBuild", "Shell", "Volumes"} & set(doc["Config"])
    assert ok(shared.root, "inspect", "-f", "{{json .Config}}", "example/app:2.0") == json.dumps(doc["Config"], separators=(",", ":")) + "\n"
    err = fail(shared.root, "inspect", "-f", "{{.Config.Nope}}", "example/base")
    assert err.endswith('executing "" at <.Config.Nope>: map has no entry for key "Nope"\n')


# -- history ---------------------------------------------------------------------------


def test_history_table(shared: Loaded) -> None:
    base_layer, own_layer = (shared.sizes[d] for d in shared.layers["app2"])
    rows = [
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        [short(shared.ids["app2"]), created_since(unix("2024-03-01T00:00:01Z")), "LABEL app=two", "0B", "labelled"],
        ["<missing>", created_since(unix("2024-03-01T00:00:00Z")), "COPY app2.bin /srv/", human_size(own_layer), ""],
        ["<missing>", created_since(unix("2024-01-01T00:00:01Z")), LONG_STEP[:44] + "…", human_size(base_layer), ""],
        ["<missing>", created_since(unix("2024-01-01T00:00:00Z")), "LABEL tier=base", "0B", ""],
    ]
    assert ok(shared.root, "history", "example/app:2.0") == table(rows)
    assert ok(shared.root, "image", "history", "other/name") == table(rows)


def test_history_options(shared: Loaded) -> None:
    out = ok(shared.root, "history", "--no-trunc", "example/base")
    assert LONG_STEP in out and shared.ids["base"] in out
    assert ok(shared.root, "history", "-q", "example/base") == f"{short(shared.ids['base'])}\n<missing>\n"
    assert ok(shared.root, "history", "-H=false", "example/base") == table([
        ["IMAGE", "CREATED AT", "CREATED BY", "SIZE", "COMMENT"],
        [short(shared.ids["base"]), "2024-01-01T00:00:01Z", LONG_STEP[:44] + "…", str(shared.size("base")), ""],
        ["<missing>", "2024-01-01T00:00:00Z", "LABEL tier=base", "0", ""],
    ])
    assert ok(shared.root, "history", "--human=false", "-q", "example/base").count("\n") == 2
    lines = ok(shared.root, "history", "--format", "json", "example/lone").splitlines()
    (doc,) = [json.loads(line) for line in lines]
    assert list(doc) == ["Comment", "CreatedAt", "CreatedBy", "CreatedSince", "ID", "Size"]
    assert doc["CreatedBy"] == "COPY lone.bin /" and doc["CreatedAt"] == "2023-06-01T00:00:00Z"
    assert ok(shared.root, "history", "--format", "{{.ID}} {{.Size}}", "example/lone") == f"{short(shared.ids['lone'])} {human_size(shared.size('lone'))}\n"
    assert fail(shared.root, "history", "nope") == "Error: No such image: nope:latest\n"  # Docker's words and form


def test_history_shows_a_layer_its_steps_leave_out_and_a_step_with_a_tab_on_one_line(tmp_path: Path) -> None:
    """A layer that no history step made gets a row of its own, dated as the image (Docker shows none);
    a tab in a step's command is a space, so that it cannot make a column of its own."""
    root = tmp_path / "store"
    stamp = "2024-05-01T00:00:00Z"
    ok(root, "load", "-q", "-i", str(_one_image_layout(tmp_path / "bare", "bare", stamp)))
    steps = [{"created": stamp, "created_by": "RUN a\tb"}, {"created": stamp, "created_by": "LABEL x=1", "empty_layer": True}]
    ok(root, "load", "-q", "-i", str(_one_image_layout(tmp_path / "tabbed", "tabbed", stamp, steps)))
    fmt = "{{.ID}}|{{.CreatedAt}}|{{.CreatedBy}}|{{.Size}}"
    with Store(root) as store:
        rows = {name: (store.resolve(f"example/{name}"), store.meta.one(
            "SELECT size FROM layers JOIN image_layers USING (diff_id) WHERE image_id = ?", store.resolve(f"example/{name}"))["size"])
            for name in ("bare", "tabbed")}
    (bare, bare_size), (tabbed, tabbed_size) = rows["bare"], rows["tabbed"]
    assert ok(root, "history", "--format", fmt, "example/bare") == f"{short(bare)}|{stamp}||{human_size(bare_size)}\n"
    assert ok(root, "history", "--format", fmt, "example/tabbed") == (
        f"{short(tabbed)}|{stamp}|LABEL x=1|0B\n<missing>|{stamp}|RUN a b|{human_size(tabbed_size)}\n")


def test_rmi_no_prune_leaves_the_layers_to_the_next_prune(own: Loaded) -> None:
    others = {d for name, diff_ids in own.layers.items() if name != "lone" for d in diff_ids}
    alone = [d for d in own.layers["lone"] if d not in others]
    assert alone
    assert ok(own.root, "rmi", "--no-prune", "example/lone:latest") == f"Untagged: example/lone:latest\nDeleted: {own.ids['lone']}\n"
    with Store(own.root) as store:
        assert set(alone) <= set(store.layers.diff_ids())
    ok(own.root, "prune", "-f")
    with Store(own.root) as store:
        assert not set(alone) & set(store.layers.diff_ids())


# -- system df --------------------------------------------------------------------------


def test_system_df(shared: Loaded) -> None:
    total = sum(shared.sizes.values())
    expected = table([
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
        ["Images", "4", "0", human_size4(total), f"{human_size4(total)} (100%)"],
        ["Containers", "0", "0", "0B", "0B"],
        ["Local Volumes", "0", "0", "0B", "0B"],
        ["Build Cache", "0", "0", "0B", "0B"],
    ])
    assert ok(shared.root, "system", "df") == expected
    docs = [json.loads(line) for line in ok(shared.root, "system", "df", "--format", "json").splitlines()]
    assert docs[0] == {"Active": "0", "Reclaimable": f"{human_size4(total)} (100%)", "Size": human_size4(total), "TotalCount": "4", "Type": "Images"}
    raw = raw_blocks(ok(shared.root, "system", "df", "--format", "raw"))
    keys = {"type": "Type", "total": "TotalCount", "active": "Active", "size": "Size", "reclaimable": "Reclaimable"}
    assert raw == [{k: d[f] for k, f in keys.items()} for d in docs] and len(raw) == 4


def test_system_df_verbose_shared_and_unique(shared: Loaded) -> None:
    out = ok(shared.root, "system", "df", "-v")
    sections = out.split("\n\n")
    assert sections[0] == "Images space usage:"
    image_table = sections[1] + "\n"
    base = shared.sizes[shared.layers["base"][0]]
    rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS"]]
    for name, repo in (("app2", "example/app"), ("app1", "example/app"), ("base", "example/base"), ("lone", "example/lone")):
        tag = {"app2": "2.0", "app1": "1.0"}.get(name, "latest")
        shared_size = base if name != "lone" else 0
        rows.append([repo, tag, short(shared.ids[name]), created_since(unix(CREATED[name])), human_size(shared.size(name)),
                     human_size4(shared_size), human_size4(shared.size(name) - shared_size), "0"])
    assert image_table == table(rows)
    assert sections[2] == "Layers space usage:"
    layer_rows = {line.split()[0]: line.split()[1:] for line in sections[3].splitlines()[1:]}
    assert layer_rows[short(shared.layers["base"][0])] == [human_size4(base), "3", human_size4(base), "0B"]
    lone = shared.sizes[shared.layers["lone"][0]]
    assert layer_rows[short(shared.layers["lone"][0])] == [human_size4(lone), "1", "0B", human_size4(lone)]
    assert sections[4] == "Containers space usage:"
    assert sections[5].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "LOCAL", "VOLUMES", "SIZE", "CREATED", "STATUS", "NAMES"]
    assert "Local Volumes space usage:" in out and "Build cache usage: 0B" in out


def test_system_df_verbose_runs_a_template_once_over_the_whole(own: Loaded) -> None:
    """As Docker's: with -v a format other than ``table`` sees .Images, .Containers, .Volumes
    and .BuildCache (and this tool's .Layers) at once, with whole IDs, and no newline is added."""
    root = own.root
    cid = _add_container(own, "app1", 3000)
    text = ok(root, "system", "df", "-v", "--format", "json")
    assert "\n" not in text
    doc = json.loads(text)
    assert list(doc) == ["Images", "Containers", "Volumes", "BuildCache", "Layers"]
    assert (doc["Volumes"], doc["BuildCache"]) == ([], [])
    header = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS"]
    assert ok(root, "system", "df", "-v").split("\n\n")[1] + "\n" == table([header] + [
        [i["Repository"], i["Tag"], short(i["ID"]), i["CreatedSince"], i["Size"], i["SharedSize"], i["UniqueSize"], i["Containers"]]
        for i in doc["Images"]
    ])
    assert {i["ID"] for i in doc["Images"]} == set(own.ids.values())
    assert {layer["ID"]: layer["Images"] for layer in doc["Layers"]} == {
        d: str(sum(d in layers for layers in own.layers.values())) for d in own.sizes
    }
    (container,) = doc["Containers"]
    assert (container["ID"], container["Names"], container["State"], container["Status"], container["Size"]) == (
        cid, "c-app1", "unmounted", "unmounted", "3kB")

    out = ok(root, "system", "df", "-v", "--format", "{{range .Images}}{{.Repository}}:{{.Tag}} {{.ID}}\\n{{end}}{{len .Layers}}")
    assert out == "".join(f"{i['Repository']}:{i['Tag']} {i['ID']}\n" for i in doc["Images"]) + str(len(own.sizes))
    # "table TEMPLATE": the IDs cut short, and still no header
    assert ok(root, "system", "df", "-v", "--format", "table {{range .Containers}}{{.ID}}{{end}}") == cid[:12]

    blocks = raw_blocks(ok(root, "system", "df", "-v", "--format", "raw"))
    assert [b["type"] for b in blocks] == ["Image"] * 4 + ["Layer"] * len(own.sizes) + ["Container"]
    assert blocks[0] == {"type": "Image", "repository": "example/app", "tag": "2.0", "digest": "", "image_id": own.ids["app2"],
                         "created_at": "2024-03-01 00:00:01 +0000 UTC", "virtual_size": human_size(own.size("app2"))}
    assert blocks[-1] == {"type": "Container", "container_id": cid, "image": "example/app:1.0", "command": '""',
                          "created_at": container["CreatedAt"], "state": "unmounted", "status": "unmounted", "names": "c-app1",
                          "labels": "", "ports": "", "size": "3kB"}
    assert "in type *formatter.diskUsageContext" in fail(root, "system", "df", "-v", "--format", "{{.Nope}}")


def _add_container(loaded: Loaded, image: str, upper_bytes: int) -> str:
    """A container that is not mounted, as ``mount`` then ``umount`` leave one."""
    cid = hashlib.sha256(image.encode()).hexdigest()
    with Store(loaded.root) as store, store.meta.transaction() as tx:
        tx.execute("INSERT INTO containers (id, name, image_id, mountpoint, read_only, created) VALUES (?, ?, ?, ?, ?, ?)", (cid, f"c-{image}", loaded.ids[image], None, 0, time.time()))
    upper = loaded.root / "containers" / cid / "upper"
    upper.mkdir(parents=True)
    (upper / "data").write_bytes(b"x" * upper_bytes)
    (loaded.root / "containers" / cid / "work").mkdir()
    return cid


def test_system_df_with_a_container(own: Loaded) -> None:
    _add_container(own, "app1", 3000)
    out = ok(own.root, "system", "df")
    rows = [line.split("   ") for line in out.splitlines()]
    images = [c.strip() for c in rows[1] if c.strip()]
    total = sum(own.sizes.values())
    used = own.size("app1")  # app1's layers, the base layer with them, stay while app1 has a container
    assert images == ["Images", "4", "1", human_size4(total), f"{human_size4(total - used)} ({(total - used) * 100 // total}%)"]
    containers = [c.strip() for c in rows[2] if c.strip()]
    assert containers == ["Containers", "1", "0", "3kB", "3kB (100%)"]
    verbose = ok(own.root, "system", "df", "-v")
    assert "c-app1" in verbose and "unmounted" in verbose


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_system_df_percentages_are_whole_and_rounded_down(own: Loaded, tmp_path: Path) -> None:
    """RECLAIMABLE's share is Go's integer division, as the Docker CLI prints it: 2 of 3 kB is 66%."""
    root = own.root
    places = {name: tmp_path / name for name in ("held", "left")}
    try:
        for (name, mnt), size in zip(places.items(), (1000, 2000)):
            mnt.mkdir()
            ok(root, "mount", "--name", name, "example/lone", str(mnt))
            (mnt / "data").write_bytes(b"x" * size)
        ok(root, "umount", "left")
        containers = [line.split() for line in ok(root, "system", "df").splitlines() if line.startswith("Containers")]
        assert containers == [["Containers", "2", "1", "3kB", "2kB", "(66%)"]]
    finally:
        for name in places:
            cli(root, "rm", "-f", name)


# -- prune ------------------------------------------------------------------------------


def test_prune_removes_exactly_the_dangling_image(own: Loaded) -> None:
    root = own.root
    assert ok(root, "prune", "-f") == "Total reclaimed space: 0B\n"
    ok(root, "tag", "example/base:latest", "example/lone:latest")
    assert ok(root, "images", "-q", "-f", "dangling=true") == short(own.ids["lone"]) + "\n"
    before = ok(root, "images", "-q").split()
    err = fail(root, "image", "prune")  # no terminal to ask on, and no -f
    assert "-f" in err
    out = ok(root, "image", "prune", "-f")
    lone_layer = own.layers["lone"][0]
    assert out == f"Deleted Images:\ndeleted: {own.ids['lone']}\n\nTotal reclaimed space: {human_size4(own.sizes[lone_layer])}\n"
    assert ok(root, "images", "-q").split() == [i for i in before if i != short(own.ids["lone"])]
    with Store(root) as store:
        assert not store.layers.has(lone_layer)
        assert all(store.layers.has(d) for d in own.layers["app2"])
    assert ok(root, "prune", "-f") == "Total reclaimed space: 0B\n"


def test_prune_all_keeps_images_with_containers(own: Loaded) -> None:
    _add_container(own, "app1", 10)
    out = ok(own.root, "prune", "-a", "-f")
    lines = out.splitlines()
    assert lines[0] == "Deleted Images:"
    assert set(lines[1:-2]) == {
        "untagged: example/app:2.0", "untagged: other/name:latest", f"deleted: {own.ids['app2']}",
        "untagged: example/base:latest", f"deleted: {own.ids['base']}",
        "untagged: example/lone:latest", f"deleted: {own.ids['lone']}",
    }
    assert lines[-2] == ""
    deleted = [line for line in lines if line.startswith("deleted: ")]  # the oldest first
    assert deleted == [f"deleted: {own.ids[name]}" for name in ("lone", "base", "app2")]
    freed = own.sizes[own.layers["app2"][1]] + own.sizes[own.layers["lone"][0]]  # the base layer stays for app1
    assert lines[-1] == f"Total reclaimed space: {human_size4(freed)}"
    assert ok(own.root, "images", "--format", "{{.Repository}}:{{.Tag}}") == "example/app:1.0\n"
    with Store(own.root) as store:
        assert all(store.layers.has(d) for d in own.layers["app1"])


def test_prune_filters_until_and_label_not(own: Loaded) -> None:
    root = own.root
    ok(root, "tag", "example/base:latest", "example/lone:latest")  # lone, created 2023-06-01T00:00:01Z, is dangling now
    # until: created strictly before it, as dockerd's image prune has it
    assert ok(root, "prune", "-f", "--filter", "until=2023-06-01T00:00:01Z") == "Total reclaimed space: 0B\n"
    assert f"deleted: {own.ids['lone']}" in ok(root, "prune", "-f", "--filter", "until=2023-06-01T00:00:02Z").splitlines()
    # label!=: the images without that label go (app1 has app=one, base none of app)
    ok(root, "prune", "-a", "-f", "--filter", "label!=app=two")
    assert ok(root, "images", "--format", "{{.Repository}}:{{.Tag}}") == "example/app:2.0\nother/name:latest\n"


def test_prune_asks_on_a_terminal(own: Loaded) -> None:
    ok(own.root, "tag", "example/base:latest", "example/lone:latest")
    for answer, deleted in (("yes", False), ("", False), ("n", False), ("Y", True)):  # y or Y alone, as the Docker CLI asks
        master, slave = pty.openpty()
        try:
            os.write(master, f"{answer}\n".encode())
            proc = cli(own.root, "image", "prune", stdin=slave)
        finally:
            os.close(slave)
            os.close(master)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("WARNING! This will remove all dangling images.\nAre you sure you want to continue? [y/N] ")
        assert (f"deleted: {own.ids['lone']}" in proc.stdout) is deleted


# -- how a command ends -----------------------------------------------------------------


def _run(root: Path, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "layerstore", "--root", str(root), *args], text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, **kwargs)  # type: ignore[call-overload]


def test_a_reader_that_goes_away_ends_the_command_quietly(shared: Loaded) -> None:
    """``layerstore images | head -0``: exit 141, as a shell reports a process killed by SIGPIPE, and nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = _run(shared.root, "images", stdout=write_end, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(write_end)
    assert (proc.returncode, err) == (141, "")


def test_an_interrupted_load_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ok(root, "images")  # the store exists before the load starts
    before = sorted(root.rglob("*"))
    # SIGINT as a terminal's ^C delivers it, even where this run inherited it ignored (a job started with &)
    proc = _run(root, "load", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdin is not None
    proc.stdin.write("x" * 512)
    proc.stdin.flush()

    def reading_stdin() -> bool:  # blocked in read(0, ...): past the start, where SIGINT is a KeyboardInterrupt
        fields = Path(f"/proc/{proc.pid}/syscall").read_text().split()
        return fields[:2] == ["0", "0x0"]

    deadline = time.monotonic() + 30
    while not reading_stdin():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "", "")
    assert ok(root, "images", "-q") == ""
    assert sorted(set(root.rglob("*")) - {root / "tmp"}) == before  # no partial blob or spooled input left
    assert list((root / "tmp").iterdir()) == []


def test_load_names_an_image_without_a_name_by_its_id_and_refuses_a_terminal(tmp_path: Path) -> None:
    layout = _one_image_layout(tmp_path / "nameless", "nameless", "2024-05-01T00:00:00Z")
    index = json.loads((layout / "index.json").read_text())
    del index["manifests"][0]["annotations"]
    (layout / "index.json").write_text(json.dumps(index))
    out = ok(tmp_path / "store", "load", "-i", str(layout))
    image_id = ok(tmp_path / "store", "images", "-q", "--no-trunc").strip()
    assert out == f"Loaded image ID: {image_id}\n"
    master, slave = pty.openpty()
    try:
        proc = cli(tmp_path / "store", "load", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "Error: requested load from stdin, but stdin is empty\n")
