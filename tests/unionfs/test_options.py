"""Option parsing: the syntax of mount -t overlay and fuse-overlayfs."""
import pytest

from unionfs.markers import WhiteoutForm
from unionfs.mount import MountSpec
from unionfs.options import OptionError, parse


def test_overlay_syntax() -> None:
    opts = parse(["lowerdir=/a:/b:/c,upperdir=/u,workdir=/w"])
    assert opts.lowerdirs == ("/a", "/b", "/c")
    assert (opts.upperdir, opts.workdir) == ("/u", "/w")
    assert not opts.read_only


def test_lowerdir_plus_appends_one_layer_each() -> None:
    """overlayfs's lowerdir+= (Linux 6.8): colons and backslashes in a path are its own;
    a later lowerdir= replaces every layer given before, as on overlayfs."""
    assert parse(["lowerdir+=/a:1,lowerdir+=/b\\:2", "lowerdir+=/c"]).lowerdirs == ("/a:1", "/b\\:2", "/c")
    assert parse(["lowerdir+=/a,lowerdir=/x:/y"]).lowerdirs == ("/x", "/y")


def test_read_only_without_upper() -> None:
    assert parse(["lowerdir=/a"]).read_only
    assert parse(["lowerdir=/a,upperdir=/u,workdir=/w,ro"]).read_only


def test_escaped_colon_and_comma() -> None:
    opts = parse([r"lowerdir=/a\:1:/b\,2"])
    assert opts.lowerdirs == ("/a:1", "/b,2")


@pytest.mark.parametrize(("text", "lowerdirs", "upperdir"), [
    (r"lowerdir=/a\,b,upperdir=/u\,v,workdir=/w", ("/a,b",), "/u,v"),
    (r"lowerdir=/a\\b:/c,upperdir=/u\\,workdir=/w", ("/a\\b", "/c"), "/u\\"),  # an escaped backslash, then a comma
    (r"lowerdir=/c\\:/d\\\::/e", ("/c\\", "/d\\:", "/e"), None),
    (r"lowerdir+=/a\,b,lowerdir+=/a\b:c", ("/a\\,b", "/a\\b:c"), None),  # lowerdir+= as it is
    ("lowerdir=/trailing\\", ("/trailing",), None),  # a backslash with nothing after it is dropped
])
def test_backslashes_as_overlayfs_reads_them(text: str, lowerdirs: tuple[str, ...], upperdir: str | None) -> None:
    """A backslash escapes the character after it, a comma, a colon or a backslash,
    in splitting the options and the lowerdir list, and is dropped from each path;
    lowerdir+= takes its path as it is (overlayfs's ovl_next_opt, ovl_unescape)."""
    opts = parse([text])
    assert (opts.lowerdirs, opts.upperdir) == (lowerdirs, upperdir)


def test_option_strings_made_for_paths_read_back_as_those_paths() -> None:
    odd = ("/a,b", "/c:d", "/e\\f", "/g\\", "/h\\,i:j")
    spec = MountSpec(odd, upperdir="/u\\,v", workdir="/w,x\\")
    opts = parse([spec.option_string()])
    assert (opts.lowerdirs, opts.upperdir, opts.workdir) == (odd, "/u\\,v", "/w,x\\")


def test_attributes_are_kept_as_long_as_names_where_the_driver_can_invalidate_them() -> None:
    assert parse(["lowerdir=/a,timeout=30"]).attr_seconds == 30.0  # native engine: notifies the kernel
    assert parse(["lowerdir=/a,timeout=30,engine=fusepy"]).attr_seconds == 1.0  # libfuse 2's path API: cannot
    assert parse(["lowerdir=/a,attr_timeout=0.5"]).attr_seconds == 0.5
    assert parse(["lowerdir=/a,attr_timeout=0,engine=fusepy"]).attr_seconds == 0.0


def test_several_o_and_mount_flags() -> None:
    opts = parse(["lowerdir=/a", "upperdir=/u,workdir=/w,nosuid,nodev,defaults,relatime,whiteout=oci,volatile"])
    assert opts.mount_flags == ("nosuid", "nodev")
    assert opts.whiteout is WhiteoutForm.OCI
    assert opts.volatile
    assert opts.io_uring == "auto"
    assert parse(["lowerdir=/a,io_uring=off"]).io_uring == "off"


def test_whiteout_auto_leaves_the_form_to_the_driver() -> None:
    """whiteout=auto is the default: no form is fixed, and the driver writes the overlay
    form as root or with userxattr, the OCI form otherwise (Union)."""
    assert parse(["lowerdir=/a,upperdir=/u,workdir=/w,whiteout=auto"]).whiteout is None
    assert parse(["lowerdir=/a,upperdir=/u,workdir=/w"]).whiteout is None
    assert parse(["lowerdir=/a,upperdir=/u,workdir=/w,whiteout=overlay"]).whiteout is WhiteoutForm.OVERLAY


def test_options_for_userspace_and_comments_are_ignored() -> None:
    """x-* options (fstab's x-systemd.*, x-gvfs-*) and comment=, which mount(8) passes on
    to a mount helper, mean nothing to the driver."""
    opts = parse(["lowerdir=/a,upperdir=/u,workdir=/w,x-systemd.automount,x-gvfs-show,comment=layers"])
    assert (opts.lowerdirs, opts.mount_flags) == (("/a",), ())


def test_userxattr_is_an_option_of_its_own() -> None:
    assert parse(["lowerdir=/a,upperdir=/u,workdir=/w,userxattr"]).userxattr
    assert not parse(["lowerdir=/a,upperdir=/u,workdir=/w,redirect_dir=on"]).userxattr


def test_fuse_overlayfs_spellings() -> None:
    assert parse(["lowerdir=/a,upperdir=/u,workdir=/w,fsync=0"]).volatile
    assert not parse(["lowerdir=/a,upperdir=/u,workdir=/w,fsync=1,default_permissions"]).volatile
    assert parse(["lowerdir=/a,upperdir=/u,workdir=/w,volatile,fsync=1"]).volatile
    opts = parse(["lowerdir=/a,static_nlink,noacl,threaded=1,fast_ino=1,writeback=0,noxattrs=0,xattr_permissions=0"])
    assert (opts.static_nlink, opts.acl) == (True, False)
    plain = parse(["lowerdir=/a"])
    assert (plain.static_nlink, plain.acl) == (False, True)


def test_fuse_overlayfs_id_options() -> None:
    assert parse(["lowerdir=/a"]).ids.identity
    ids = parse(["lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:2000:10"]).ids
    assert [(r.host, r.shown, r.count) for r in ids.uids] == [(0, 1000, 1), (1, 100000, 65536)]
    assert (ids.uid_shown(0), ids.uid_shown(2), ids.uid_shown(70000)) == (1000, 100001, ids.overflow_uid)
    assert (ids.uid_on_disk(1000), ids.uid_on_disk(100001), ids.uid_on_disk(0)) == (0, 2, ids.overflow_uid)
    assert (ids.gid_shown(9), ids.gid_on_disk(2009), ids.gid_shown(10)) == (2009, 9, ids.overflow_gid)
    squashed = parse(["lowerdir=/a,squash_to_root,squash_to_gid=7"]).ids
    assert (squashed.uid_shown(1234), squashed.gid_shown(1234)) == (0, 7)
    assert (squashed.uid_on_disk(1234), squashed.gid_on_disk(1234)) == (1234, 1234)  # squashing shows, never writes
    assert parse(["lowerdir=/a,squash_to_uid=5,squash_to_root"]).ids.uid_shown(0) == 5  # squash_to_uid comes first


@pytest.mark.parametrize(
    "text, message",
    [
        ("upperdir=/u,workdir=/w", "missing lowerdir"),
        ("lowerdir=/a,upperdir=/u", "together"),
        ("lowerdir=/a:", "empty layer"),
        ("lowerdir=/a::/b", "data-only lower layers are not supported"),
        ("lowerdir+=/a,datadir+=/b", "datadir\\+=/b: data-only lower layers are not supported"),
        ("lowerdir=/a,lowerdir+=/b", "lowerdir\\+=/b: lowerdir\\+ cannot follow lowerdir"),
        ("lowerdir+=", "lowerdir\\+: empty path"),
        ("lowerdir=/a,noxattrs=1", "noxattrs=1: not supported"),
        ("lowerdir=/a,xattr_permissions=1", "xattr_permissions=1: not supported"),
        ("lowerdir=/a,threaded=on", "threaded=on: expected a number"),
        ("lowerdir=/a,plugins=/p.so", "plugins=/p.so: fuse-overlayfs's layer plugins are not supported"),
        ("lowerdir=/a,frobnicate", "unknown option: frobnicate"),
        ("lowerdir=/a,whiteout=zip", "whiteout=zip"),
        ("lowerdir=/a,timeout=soon", "not a number"),
        ("lowerdir=/a,io_uring=yes", "io_uring=yes: expected auto, on or off"),
        ("lowerdir=/a,fsync=no", "fsync=no: expected 0 or 1"),
        ("lowerdir=/a,uidmapping=0:1000", "uidmapping=0:1000: expected ID:MAPPED-ID:COUNT"),
        ("lowerdir=/a,gidmapping=0:x:1", "gidmapping=0:x:1: expected ID:MAPPED-ID:COUNT"),
        ("lowerdir=/a,squash_to_uid=-1", "squash_to_uid=-1: expected a numeric ID"),
        ("lowerdir=/a,squash_to_root,engine=fusepy", "squash_to_root: not with engine=fusepy"),
    ],
)
def test_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        parse([text])


def test_spec_round_trips_through_the_option_string() -> None:
    spec = MountSpec(("/l:1", "/l,2"), "/u", "/w", ("volatile",))
    opts = parse([spec.option_string()])
    assert opts.lowerdirs == spec.lowerdirs
    assert (opts.upperdir, opts.workdir, opts.volatile) == ("/u", "/w", True)
