#!/bin/sh
# purity: prune/ (the engine) and proto/ (the codec) include nothing from the process side
# of the project, so they stay a library that a test, a fuzzer or another program can link
# without a daemon, a database or a network stack.
#
# Includes in this tree are flat ("store.h", not "store/store.h"; each folder is an include
# directory), so matching paths would catch nothing. The forbidden set is therefore every
# header that lives under daemon/, api/ or store/, by file name, read from the tree on each
# run (a header added there is covered without editing this script), plus the headers of the
# libraries only the process side links: libuv, libmicrohttpd, SQLite, jansson, OpenSSL.
# A path into those folders ("../store/store.h") fails too. A file name used both by the
# engine and by the process side counts as forbidden: with flat includes it is ambiguous
# which file is meant, so one of them must be renamed.
#
# Usage: check_purity.sh SOURCE_ROOT. Exit 0 when pure, 1 with the offending lines, 2 when
# the tree is not where it should be.
set -eu
root=${1:?usage: check_purity.sh SOURCE_ROOT}
cd "$root"

for d in daemon api store prune proto; do
  if [ ! -d "$d" ]; then
    echo "purity: $root/$d is missing; is $root the source root?"
    exit 2
  fi
done

process_headers=$(find daemon api store -type f -name '*.h' | sed 's|.*/||' | sort -u |
                  tr '\n' ' ')
if [ -z "$process_headers" ]; then
  echo "purity: found no header under daemon/, api/ or store/; is $root the source root?"
  exit 2
fi

bad=$(find prune proto -type f \( -name '*.c' -o -name '*.h' \) -exec awk -v hdrs="$process_headers" '
  BEGIN { n = split(hdrs, h, " "); for (i = 1; i <= n; i++) forbidden[h[i]] = 1 }
  match($0, /^[ \t]*#[ \t]*include[ \t]*[<"][^>"]+[>"]/) {
    name = substr($0, RSTART, RLENGTH)
    sub(/^[^<"]*[<"]/, "", name)
    sub(/[>"]$/, "", name)
    base = name
    sub(/.*\//, "", base)
    why = ""
    if (base in forbidden)
      why = "a header of daemon/, api/ or store/"
    else if (name ~ /^(\.\.\/)*(daemon|api|store)\//)
      why = "a path into daemon/, api/ or store/"
    else if (name ~ /^(uv|microhttpd|sqlite3|sqlite3ext|jansson)\.h$/ || name ~ /^uv\//)
      why = "libuv, libmicrohttpd, SQLite or jansson"
    else if (name ~ /^openssl\//)
      why = "OpenSSL"
    if (why != "")
      printf "%s:%d: #include %s  (%s)\n", FILENAME, FNR, name, why
  }' {} + | sort)

if [ -n "$bad" ]; then
  echo "purity: prune/ and proto/ must not include the process side; offending includes:"
  echo "$bad"
  exit 1
fi
echo "purity: prune/ and proto/ include no header of daemon/, api/ or store/" \
     "($(echo "$process_headers" | wc -w) names) and no libuv, HTTP, SQLite, JSON or" \
     "OpenSSL header"
