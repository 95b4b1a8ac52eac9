#!/usr/bin/env bash
# The aws-cli way, as its docs show: `aws s3api list-multipart-uploads` (the CLI follows the pages
# itself), filtered on Initiated with --query, then one `aws s3api abort-multipart-upload` per upload.
#   awscli_sweep.sh ENDPOINT BUCKET CUTOFF     (CUTOFF: UTC YYYY-MM-DDTHH:MM:SS)
set -euo pipefail
endpoint=$1 bucket=$2 cutoff=$3

aws s3api list-multipart-uploads --endpoint-url "$endpoint" --bucket "$bucket" \
  --query "Uploads[?Initiated<'$cutoff'].[Key,UploadId]" --output text |
  while IFS=$'\t' read -r key upload_id; do
    # An empty result prints "None".
    [ -n "$upload_id" ] || continue
    aws s3api abort-multipart-upload --endpoint-url "$endpoint" --bucket "$bucket" \
      --key "$key" --upload-id "$upload_id"
  done
