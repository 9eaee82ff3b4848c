#!/usr/bin/env bash
# A command for the exec backend: reads the job from stdin, reports progress on stdout as JSON
# lines, and leaves its output in $OUTLAST_OUTPUT_DIR.
set -euo pipefail
job=$(cat)
for i in 1 2 3 4 5; do
  sleep 0.2
  echo "{\"progress\": $i, \"max\": 5, \"label\": \"working $i/5\"}"
done
printf '%s\n' "$job" > "$OUTLAST_OUTPUT_DIR/job.json"
echo "done" > "$OUTLAST_OUTPUT_DIR/result.txt"
