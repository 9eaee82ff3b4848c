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
    -H "Upload-Metadata: filename $(basename "$photo" | base64 | tr -d '\n')" \
    | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  curl -fsS "${auth[@]}" -X PATCH "$base$location" -H 'Tus-Resumable: 1.0.0' \
    -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' \
    --data-binary @"$photo" >/dev/null
  body=${body/UPLOAD_ID/${location##*/}}
fi
job=$(curl -fsS "${auth[@]}" -H 'Content-Type: application/json' -d "$body" "$base/v1/jobs" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
echo "job $job"
after=0
while :; do
  page=$(curl -fsS "${auth[@]}" "$base/v1/jobs/$job/poll?after=$after&timeout_ms=20000")
  after=$(python3 -c 'import json,sys
p = json.loads(sys.argv[1])
for e in p["events"]:
    t = e["type"]
    if t == "progress":
        step = f" {e['value']}/{e['max']}" if e["max"] else ""
        print(f"  {e.get('label') or ''}{step}", file=sys.stderr)
    elif t in ("queued", "started", "output", "completed", "failed", "canceled"):
        print("  " + json.dumps(e), file=sys.stderr)
print(p["events"][-1]["seq"] if p["events"] else sys.argv[2])' "$page" "$after")
  state=$(curl -fsS "${auth[@]}" "$base/v1/jobs/$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  case $state in completed|failed|canceled) break ;; esac
done
echo "state: $state"
for name in $(curl -fsS "${auth[@]}" "$base/v1/jobs/$job" \
  | python3 -c 'import json,sys; print(" ".join(o["name"] for o in json.load(sys.stdin)["outputs"]))'); do
  curl -fsS "${auth[@]}" -o "$name" "$base/v1/jobs/$job/outputs/$name" && echo "saved $name"
done
