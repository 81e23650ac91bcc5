#!/bin/sh
# deploy/deb/build.sh [OUTDIR]: builds sparsityd_<version>_<arch>.deb into OUTDIR (default
# the current directory) with dpkg-deb, for `apt install ./sparsityd_*.deb` on Debian 12.
#
# The package is what `meson install` installs for prefix /usr with the tags runtime, man
# and service (the binaries sparsityd and sparsityd-server, the man pages, the unit, the
# sysusers.d entry and the default /etc/sparsityd/sparsityd.conf, a conffile), plus what only a .deb has: the control file,
# whose Depends dpkg-shlibdeps reads off the binaries, the copyright file, naming the licence
# meson.build declares (deploy/deb/copyright.in), and the maintainer scripts (maintscripts/): the system user
# `sparsityd`, /var/lib/sparsityd, and the unit enabled and started where systemd runs.
#
# The build directory (SPARSITYD_DEB_BUILD, default build-deb) is configured once and
# rebuilt incrementally. The container build (deploy/container/Containerfile) runs this
# script, and so does tests/py/test_deploy.py, on a copy of the tree.
set -eu
cd "$(dirname "$0")/../.."
out=${1:-.}
build=${SPARSITYD_DEB_BUILD:-build-deb}

for tool in meson ninja dpkg-deb dpkg-shlibdeps python3; do
  command -v "$tool" >/dev/null || {
    echo "deploy/deb/build.sh: $tool is missing: run ./scripts/deps.sh" >&2; exit 1; }
done

[ -f "$build/build.ninja" ] || meson setup "$build" --prefix=/usr --sysconfdir=/etc \
  --localstatedir=/var -Dtests=false >/dev/null
ninja -C "$build" >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
meson install -C "$build" --destdir "$root" --tags runtime,man,service --strip \
  --no-rebuild --quiet

version=$(meson introspect --projectinfo "$build" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])')
arch=$(dpkg --print-architecture)

# Debian policy: man pages compressed, the copyright file under /usr/share/doc/<package>.
# deploy/meson.build wrote that file from project()'s licence; Debian must ship its text.
find "$root/usr/share/man" -type f -exec gzip -9n {} +
doc="$root/usr/share/doc/sparsityd"
mkdir -p "$doc"
cp "$build/deploy/copyright" "$doc/copyright"
license=$(sed -n 's/^License: //p' "$doc/copyright" | head -n 1)
[ -f "/usr/share/common-licenses/$license" ] || {
  echo "deploy/deb/build.sh: Debian has no /usr/share/common-licenses/$license for the" \
       "copyright file to point at" >&2; exit 1; }

# dpkg-shlibdeps wants a debian/control to read; the libraries' own packages (installed
# with their -dev packages by scripts/deps.sh) say which versions the binary needs.
mkdir -p "$work/src/debian"
printf 'Source: sparsityd\n\nPackage: sparsityd\nArchitecture: any\n' > "$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O "$root/usr/bin/sparsityd" \
  "$root/usr/bin/sparsityd-server" 2>/dev/null \
  | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "deploy/deb/build.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<EOF
Package: sparsityd
Version: $version
Architecture: $arch
Maintainer: sparsityd maintainers <maintainers@sparsityd.dev>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $shlibs, adduser
Section: science
Priority: optional
Description: 2:4 structured sparsity for TensorFlow models, as a CLI and a daemon
 sparsityd makes TensorFlow models 2:4 structured sparse: in every group of 4
 consecutive weights along a layer's reduction axis, at most 2 are non-zero. One
 binary runs the insert, export, prune and check stages offline, and as a systemd
 service (sparsityd.service) that runs them as jobs over an HTTP API with tokens,
 TLS and Prometheus metrics.
EOF
echo /etc/sparsityd/sparsityd.conf > "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 deploy/deb/maintscripts/$s "$root/DEBIAN/$s"
done

# Whatever the umask of the build: directories 0755, files 0644, executables 0755.
chmod -R u=rwX,go=rX "$root"
mkdir -p "$out"
deb="$out/sparsityd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
