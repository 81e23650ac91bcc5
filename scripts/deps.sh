#!/bin/sh
# Installs what sparsityd needs and is missing: Debian packages for the build (and,
# with --test, for the tests), plus a Python venv with TensorFlow for the real-TF tests.
# Safe to run again: it only installs what is absent.
set -eu
cd "$(dirname "$0")/.."

build_pkgs="meson ninja-build pkg-config gcc libc6-dev protobuf-c-compiler libprotobuf-c-dev
libmicrohttpd-dev libjansson-dev libsqlite3-dev libuv1-dev libssl-dev
dpkg-dev libgnutls28-dev"
# libgnutls28-dev: api/api_tls.c's certificate callback (libmicrohttpd-dev pulls it in too)
# dpkg-dev: dpkg-shlibdeps, which deploy/deb/build.sh asks for the .deb's Depends
# clang + libclang-rt-14-dev: libFuzzer for the fuzz targets (tests/fuzz, -Dfuzz=true);
# systemd + man-db: systemd-analyze verify/security on the unit (tests/py/test_systemd.py)
# debootstrap: a clean Debian 12 root for the .deb and the image (tests/py/test_deb.py);
# groff-base: the man pages (test_deploy.py); openssl: the test certificates;
# nginx-light: deploy/nginx/sparsityd.conf run in front of a daemon (test_tls.py)
# chromium, chromium-driver: the dashboard in a headless browser (test_web.py, Selenium)
test_pkgs="check protobuf-compiler valgrind python3 python3-venv python3-pip curl jq
clang libclang-rt-14-dev systemd man-db
debootstrap groff-base openssl nginx-light chromium chromium-driver"

want="$build_pkgs"
[ "${1:-}" = "--test" ] && want="$want $test_pkgs"

missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "deps: installing$missing"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# promtool (tests/py/test_metrics.py checks /metrics with it) and the prometheus server
# (tests/py/test_grafana.py runs the Grafana dashboard's queries on it, started by the
# test itself) ship only in Debian's prometheus package, whose install would also start
# a Prometheus server and its node exporter wherever init scripts run: only these two
# binaries are unpacked from the package.
if [ "${1:-}" = "--test" ] && ! { command -v promtool && command -v prometheus; } >/dev/null; then
  echo "deps: unpacking promtool and prometheus from Debian's prometheus package into /usr/local/bin"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  t=$(mktemp -d)
  (cd "$t" && { apt-get download -qq prometheus 2>/dev/null ||
    { $SUDO apt-get update -qq && apt-get download -qq prometheus; }; } &&
    dpkg-deb -x prometheus_*.deb root)
  $SUDO install -m 0755 "$t/root/usr/bin/promtool" "$t/root/usr/bin/prometheus" /usr/local/bin/
  rm -rf "$t"
fi

if [ "${1:-}" = "--test" ]; then
  # The venv is (re)filled whenever tests/py/requirements.txt changes; the stamp is its hash.
  want_sum=$(sha256sum tests/py/requirements.txt | cut -d' ' -f1)
  if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$want_sum" ]; then
    echo "deps: filling .venv from tests/py/requirements.txt (TensorFlow is a test dependency only)"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r tests/py/requirements.txt
    echo "$want_sum" > .venv/.requirements.sha256
  fi
fi
