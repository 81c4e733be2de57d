#!/usr/bin/env bash
# The object screen (results/object_screen.md): every row of a rows file through row.sh, two side by side (one
# thread each), each row's log in runs/screen/NAME.log; a row whose metrics.json exists is skipped (rerun resumes).
#   experiments/screen/object_screen.sh [experiments/screen/object_rows.txt]
# A row is "NAME YAML [key=value ...]", exactly the arguments of row.sh.
set -uo pipefail
rows=${1:-experiments/screen/object_rows.txt}
mkdir -p runs/screen
grep -v '^\s*#' "$rows" | grep -v '^\s*$' | while read -r name rest; do
  [ -f "runs/screen/$name/version_0/metrics.json" ] && continue
  echo "$name $rest"
done | xargs -P ${PARALLEL:-2} -L 1 bash -c 'experiments/screen/row.sh "$0" "$@" > "runs/screen/$0.log" 2>&1; echo "$0 exit $?"'
