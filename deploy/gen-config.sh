#!/bin/sh
# gen-config.sh SPARSITYD OUTPUT: writes the default /etc/sparsityd/sparsityd.conf from
# the settings table (`SPARSITYD serve --print-config`), every setting commented out with
# its default, so the file documents the defaults without pinning them: a later version's
# defaults apply to every line the operator did not uncomment. Run by meson at build time.
set -eu
bin=$1 out=$2
# The defaults, not this build machine's environment: under systemd the data directory
# defaults to $STATE_DIRECTORY, which must not leak into the generated file.
unset STATE_DIRECTORY
{
  echo "# sparsityd settings, read by \`sparsityd serve --config FILE\` (the systemd unit"
  echo "# passes this file). One \`name = value\` per line; a flag on the command line"
  echo "# overrides the file. Every line below is a default, commented out: uncomment and"
  echo "# change what you need. SIGHUP (\`systemctl reload sparsityd\`) re-reads the"
  echo "# settings marked reloadable. See sparsityd.conf(5)."
  echo "#"
  "$bin" serve --print-config | sed -e '/^#/!s/^/#/' -e 's/[[:space:]]*$//'
} > "$out.tmp"
mv "$out.tmp" "$out"
