#!/usr/bin/env bash
# The s3cmd way, as its docs show: `s3cmd multipart s3://BUCKET` lists uploads (Initiated, path,
# id), then one `s3cmd abortmp s3://BUCKET/KEY ID` per upload initiated before the cutoff.
#   s3cmd_sweep.sh S3CFG BUCKET CUTOFF     (CUTOFF: UTC YYYY-MM-DDTHH:MM:SS)
set -euo pipefail
cfg=$1 bucket=$2 cutoff=$3

# The first two lines are the bucket URI and a header.
s3cmd -c "$cfg" multipart "s3://$bucket" | tail -n +3 |
  while IFS=$'\t' read -r initiated path upload_id; do
    # Initiated is ISO 8601 UTC, so string order is time order.
    [[ "$initiated" < "$cutoff" ]] || continue
    s3cmd -c "$cfg" abortmp "$path" "$upload_id" >/dev/null
  done
