#!/usr/bin/env bash
# Submit a demo job and follow it by long-polling: works through any proxy, no WebSocket needed.
# Usage: examples/submit-and-follow.sh [http://127.0.0.1:8080]
set -euo pipefail
base=${1:-http://127.0.0.1:8080}
key="example-$(date +%s)-$$"
job=$(curl -fsS -X POST "$base/v1/jobs" -H "Idempotency-Key: $key" \
  -d '{"backend":"demo","workflow":{"steps":5,"step_ms":300}}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
echo "job $job"
after=0
while :; do
  answer=$(curl -fsS "$base/v1/jobs/$job/poll?after=$after")
  after=$(python3 -c 'import json,sys
a = json.loads(sys.argv[1])
for e in a["events"]:
    extra = {k: v for k, v in e.items() if k not in ("job_id", "seq", "at_ms", "type", "data")}
    print("  #%s %s %s" % (e["seq"], e["type"], extra), file=sys.stderr)
print(a["next_after"])
if a["done"]:
    sys.exit(3)' "$answer") || break
done
curl -fsS -o result.png "$base/v1/jobs/$job/outputs/result.png" && echo "saved result.png"
