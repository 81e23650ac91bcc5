#!/bin/sh
# Fails when prune/ or proto/ include anything from the process side of the project.
root=${1:?source root}
bad=$(grep -nE '#include *[<"](uv\.h|microhttpd\.h|sqlite3\.h|jansson\.h|(\.\./)?(daemon|api|store)/)' \
      "$root"/prune/*.[ch] "$root"/proto/*.[ch] 2>/dev/null)
if [ -n "$bad" ]; then
  echo "engine/codec must stay pure; offending includes:"
  echo "$bad"
  exit 1
fi
echo "purity: prune/ and proto/ include no daemon, api, store, libuv, HTTP, SQLite or JSON headers"
