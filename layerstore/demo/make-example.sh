#!/bin/sh
# How example.tar was made (kept in the repository, so the demo needs no
# network): two layers built with umoci, exported by skopeo as a docker-archive.
set -eu
out=$(cd "$(dirname "$0")" && pwd)/example.tar
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
umoci init --layout oci
umoci new --image oci:demo
umoci config --image oci:demo --config.label org.opencontainers.image.title=demo \
    --config.cmd /bin/sh --history.created_by "layerstore demo"
umoci unpack --image oci:demo bundle >/dev/null
r=bundle/rootfs
mkdir -p $r/etc $r/usr/share/doc/demo $r/var/cache/demo $r/srv/www $r/bin
printf 'NAME="Demo Linux"\nVERSION="1"\nID=demo\n' > $r/etc/os-release
printf 'root:x:0:0:root:/root:/bin/sh\n' > $r/etc/passwd
for f in /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0; do
    [ -f "$f" ] && cp "$f" $r/usr/share/doc/demo/
done
echo "cached data" > $r/var/cache/demo/index.db
printf '#!/bin/sh\necho "hello from the demo image"\n' > $r/bin/hello && chmod 755 $r/bin/hello
umoci repack --image oci:demo --history.created_by "base layer" bundle
rm -rf bundle && umoci unpack --image oci:demo bundle >/dev/null
r=bundle/rootfs
rm -rf $r/var/cache/demo
printf 'NAME="Demo Linux"\nVERSION="2"\nID=demo\n' > $r/etc/os-release
echo '<h1>hello from the app layer</h1>' > $r/srv/www/index.html
ln -s ../srv/www $r/etc/www
umoci repack --image oci:demo --history.created_by "app layer" bundle
skopeo copy -q oci:oci:demo "docker-archive:$out:example/demo:latest"
