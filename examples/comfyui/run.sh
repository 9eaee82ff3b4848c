#!/usr/bin/env bash
# Runs a ComfyUI workflow through Outlast and downloads its outputs, with curl and python3.
#
#   outlast --comfyui http://127.0.0.1:8188 &
#   examples/comfyui/run.sh examples/comfyui/txt2img.json
#   examples/comfyui/run.sh examples/comfyui/img2img.json photo.jpg
#
# With a photo, it is uploaded first (tus, one request; use the CLI uploader or tus-js-client
# for resumable uploads over slow links) and its upload id replaces UPLOAD_ID.
# OUTLAST (default http://127.0.0.1:8080) and OUTLAST_TOKEN configure the gateway.
set -euo pipefail
base=${OUTLAST:-http://127.0.0.1:8080}
auth=()
[ -n "${OUTLAST_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $OUTLAST_TOKEN")
job_file=$1
photo=${2:-}
body=$(cat "$job_file")
if [ -n "$photo" ]; then
  size=$(wc -c <"$photo")
  location=$(curl -fsS -D - -o /dev/null "${auth[@]}" -X POST "$base/v1/uploads" \
    -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $size" \
    -H "Upload-Metadata: filename $(printf %s "$(basename "$photo")" | base64 | tr -d '\n')" \
    | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  curl -fsS "${auth[@]}" -X PATCH "$base$location" -H 'Tus-Resumable: 1.0.0' \
    -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' \
    --data-binary @"$photo" >/dev/null
  body=${body/UPLOAD_ID/${location##*/}}
fi
job=$(curl -fsS "${auth[@]}" -H 'Content-Type: application/json' -d "$body" "$base/v1/jobs" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
echo "job $job"
# Prints the events of one long-poll page (to stderr); prints the last sequence number, and
# the final state once a terminal event came (stdout).
read -r -d '' show <<'PY' || true
import json, sys
page, after, state = json.loads(sys.argv[1]), sys.argv[2], ""
for e in page["events"]:
    t = e["type"]
    if t == "progress":
        step = " %d/%d" % (e["value"], e["max"]) if e["max"] else ""
        print("  " + (e.get("label") or "") + step, file=sys.stderr)
    elif t in ("queued", "started", "output", "completed", "failed", "canceled"):
        print("  " + json.dumps(e), file=sys.stderr)
    if t in ("completed", "failed", "canceled"):
        state = t
print(page["events"][-1]["seq"] if page["events"] else after, state)
PY
after=0
state=
while [ -z "$state" ]; do
  page=$(curl -fsS "${auth[@]}" "$base/v1/jobs/$job/poll?after=$after&timeout_ms=20000")
  read -r after state < <(python3 -c "$show" "$page" "$after")
done
echo "state: $state"
for name in $(curl -fsS "${auth[@]}" "$base/v1/jobs/$job" \
  | python3 -c 'import json,sys; print(" ".join(o["name"] for o in json.load(sys.stdin)["outputs"]))'); do
  curl -fsS "${auth[@]}" -o "$name" "$base/v1/jobs/$job/outputs/$name" && echo "saved $name"
done
