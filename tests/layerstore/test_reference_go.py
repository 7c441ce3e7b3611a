"""Image names as the Docker CLI reads them (``pull``, ``tag``, ``rmi``...) against Go's
own reference package: ``gocli/main.go`` parses the same text with
``reference.ParseNormalizedNamed`` (Debian's docker-distribution 2.8.2) and prints
the registry, path, tag, digest and familiar form, or the error.

Debian's package is older than the one today's Docker CLI uses
(``distribution/reference`` 0.6). Where the two differ, this module follows
today's, and the generated names keep clear of those differences, which
targeted tests check instead: a registry in brackets (IPv6), a first component
with capitals and no dot or port (a registry now, a lowercase error then), a
length limit on the path alone (it was on the whole name), and the wording of
the lowercase error (the path is named now).

The patterns of ``images --filter reference=`` are compared with Go's
``path.Match`` the same way.
"""
from __future__ import annotations

import hashlib
import re

import gocli
import pytest
from budgets import examples, long_run_marks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerstore.errors import CommandError, InvalidReference
from layerstore.queries import go_path_match
from layerstore.reference import parse

pytestmark = long_run_marks("REFERENCE_EXAMPLES", seconds_each=0.01)

SHA256 = hashlib.sha256(b"").hexdigest()
SHA512 = hashlib.sha512(b"").hexdigest()
# go-digest's words for a digest that does not parse
DIGEST_ERRORS = ("invalid checksum digest format", "invalid checksum digest length", "unsupported digest algorithm")


def ours(text: str) -> dict[str, str]:
    """What gocli answers, from this package: the parts and the familiar form, or the error."""
    try:
        ref = parse(text, default_tag=False)
    except InvalidReference as exc:
        return {"stage": "parse", "err": exc.problem}
    return {"out": "\n".join([ref.domain, ref.path, ref.tag or "", ref.digest or "", str(ref)])}


def theirs(go_cli: gocli.Ask, text: str) -> dict[str, str]:
    """Go's answer, its lowercase error worded as today's Docker words it (with the path)."""
    answer = go_cli({"reference": text})
    if answer.get("err") == "invalid reference format: repository name must be lowercase":
        ours_said = ours(text).get("err", "")
        said = re.fullmatch(r"invalid reference format: repository name \((.*)\) must be lowercase", ours_said)
        if said:
            answer["err"] = ours_said
    return answer


NAMES = [
    "busybox", "busybox:1.36", "ubuntu:22.04", "library/ubuntu", "docker.io/ubuntu", "docker.io/library/ubuntu",
    "index.docker.io/ubuntu", "index.docker.io/library/ubuntu:latest", "index.docker.io/org/app",
    "myorg/app", "myorg/team/app:v1", "localhost/app", "localhost:5000/app", "localhost:5000/a/b:c",
    "127.0.0.1:5000/app:1", "registry.example.com/org/app", "registry.example.com:443/org/app:1.0",
    "quay.io/coreos/etcd", "ghcr.io/o-r_g/a__b--c.d", "Registry.Example.com/app", "example.com:0/x",
    f"busybox@sha256:{SHA256}", f"busybox:1.36@sha256:{SHA256}", f"localhost:5000/x@sha512:{SHA512}",
    "a" * 64, "A" * 64, "a" * 63, "a" * 65, f"sha256:{SHA256}", f"{SHA256}:latest",
    "", " busybox", "busybox ", "UPPER", "Upper:tag", "org/UPPER", "busybox:UPPER_tag.1-x", "busybox:é", "busybox:",
    "busybox:" + "t" * 128, "busybox:" + "t" * 129, "busybox:.tag", "busybox:-tag", "busybox:_tag",
    "a b", "a//b", "/a", "a/", "a:b:c", "a@b", "a@sha256:abc", f"a@sha256:{SHA256.upper()}", f"a@SHA256:{SHA256}",
    f"a@sha256:{SHA256[:-1]}", f"a@md5:{'0' * 32}", f"a@sha1:{'0' * 40}", "a..b", "a.-b", "a___b", "a--b", "a-",
    "-a", "localhost", "localhost:5000", "host:port/x", "host:/x", "ho_st.com/x", "x_y.z/a", "-host.com/x",
    "host-.com/x", "a.b.c.d.e/f", "x/" + "a" * 240, "x/" + "a" * 260,
]


@pytest.mark.parametrize("text", NAMES)
def test_names_read_as_the_docker_cli_reads_them(go_cli: gocli.Ask, text: str) -> None:
    assert_read_alike(go_cli, text)


# -- generated names -------------------------------------------------------------

_COMPONENTS = st.text("ab0._-", min_size=1, max_size=6)
_HOSTS = st.sampled_from(["localhost", "localhost:5000", "example.com", "a.b", "127.0.0.1:5000", "index.docker.io",
                          "docker.io", "h-x.y", "-h.y", "h_x.y", "h..x", "x:", "x:5000a", "Example.COM", "x.y:99"])
_TAGS = st.text("aZ9_.-é", max_size=6)
_DIGESTS = st.tuples(st.sampled_from(["sha256", "sha512", "md5", "SHA256", "sha256+b", "s"]),
                     st.sampled_from([32, 63, 64, 128]), st.text("0123456789abcdefA", min_size=1, max_size=1))


@st.composite
def names(draw: st.DrawFn) -> str:
    parts = [draw(_HOSTS)] if draw(st.booleans()) else []
    parts += draw(st.lists(_COMPONENTS, min_size=1, max_size=3))
    if draw(st.integers(0, 20)) == 0:  # a capital here and there, but not where the two packages differ
        i = draw(st.integers(0, len(parts) - 1))
        if i or len(parts) == 1 or re.search("[.:]", parts[0]):
            parts[i] = parts[i].upper()
    text = "/".join(parts)
    if draw(st.booleans()):
        text += ":" + draw(_TAGS)
    if draw(st.integers(0, 3)) == 0:
        algorithm, length, odd = draw(_DIGESTS)
        hexes = list((SHA512 * 2)[:length])
        hexes[draw(st.integers(0, length - 1))] = odd
        text += f"@{algorithm}:{''.join(hexes)}"
    return text


@settings(max_examples=examples("REFERENCE_EXAMPLES", 1000), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=names())
def test_generated_names_read_as_the_docker_cli_reads_them(go_cli: gocli.Ask, text: str) -> None:
    assert_read_alike(go_cli, text)


# -- where this package differs, on purpose ---------------------------------------


@pytest.mark.parametrize(("text", "domain", "path"), [
    ("[::1]/app", "[::1]", "app"),
    ("[fe80::1]:5000/org/app:1", "[fe80::1]:5000", "org/app"),
    ("Registry/app", "Registry", "app"),  # capitals: a registry, as today's splitDockerDomain has it
    ("x/" + "a" * 253, "docker.io", "x/" + "a" * 253),  # 255 characters of path; the registry is not counted
])
def test_todays_docker_reads_these_as_names(text: str, domain: str, path: str) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path) == (domain, path)


@pytest.mark.parametrize(("text", "problem"), [
    ("UPPER", "invalid reference format: repository name (library/UPPER) must be lowercase"),
    ("org/App:1", "invalid reference format: repository name (org/App) must be lowercase"),
    ("x/" + "a" * 254, "repository name must not be more than 255 characters"),
    ("a_b.c/app", 'invalid reference format: invalid registry host "a_b.c"'),
    (f"app@sha384:{hashlib.sha384(b'').hexdigest()}", "unsupported algorithm"),
])
def test_these_are_refused(text: str, problem: str) -> None:
    """A first component that looks like a registry but is none: Docker reads the whole as a path on
    no registry at all, and fails later when it looks for one; refused here at once. A digest
    of an algorithm the store cannot verify (sha384): Go's package takes it; refused here."""
    with pytest.raises(InvalidReference) as info:
        parse(text)
    assert problem in info.value.problem and str(info.value).startswith(f'reference "{text}": ')


def assert_read_alike(go_cli: gocli.Ask, text: str) -> None:
    mine, go = ours(text), theirs(go_cli, text)
    if go.get("out", "").startswith("\n"):  # no registry: the case refused here on purpose
        assert "invalid registry host" in mine.get("err", ""), (text, mine)
        return
    if go.get("err") in DIGEST_ERRORS:  # the digest module's own words, which say more
        assert mine.get("err", "").startswith('digest "'), (text, mine, go)
        return
    assert mine == go, text


# -- patterns of images' reference filter: Go's path.Match --------------------------


def matched(pattern: str, name: str) -> dict[str, str]:
    """What gocli answers for path.Match, from this package."""
    try:
        return {"out": "true" if go_path_match(pattern, name) else "false"}
    except CommandError as exc:
        assert str(exc).endswith(": syntax error in pattern"), exc
        return {"stage": "parse", "err": "syntax error in pattern"}


PATTERNS = [
    ("busybox", "busybox"), ("busy*", "busybox"), ("*", "org/app"), ("*/*", "org/app"), ("org/*", "org/app:1"),
    ("?usybox", "busybox"), ("?", "/"), ("[a-c]*", "busybox"), ("[^a-c]*", "busybox"), ("[^a]", "/"),
    ("a[/]b", "a/b"), ("*:1.*", "app:1.36"), ("\\*", "*"), ("[\\]]", "]"), ("[\\-]", "-"), ("[a\\-z]", "-"),
    ("[]", "]"), ("[]a]", "]"), ("[-a]", "-"), ("[a-]", "-"), ("[^]", "x"), ("[a", "a"), ("[a-", "a"), ("a\\", "a"),
    ("[z-a]", "m"), ("[^z-a]", "m"), ("[z-ab]", "b"), ("b[", "a"), ("*[", "x"), ("é*", "éa"), ("[é-ü]", "ö"),
]


@pytest.mark.parametrize(("pattern", "name"), PATTERNS)
def test_reference_patterns_match_as_gos_path_match(go_cli: gocli.Ask, pattern: str, name: str) -> None:
    assert matched(pattern, name) == go_cli({"pattern": pattern, "name": name})


@settings(max_examples=examples("REFERENCE_EXAMPLES", 1000), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pattern=st.text("ab/*?[]^-\\é", max_size=8), name=st.text("ab/-]^\\é*", max_size=6))
def test_generated_patterns_match_as_gos_path_match(go_cli: gocli.Ask, pattern: str, name: str) -> None:
    assert matched(pattern, name) == go_cli({"pattern": pattern, "name": name})
