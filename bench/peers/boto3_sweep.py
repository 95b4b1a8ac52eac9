#!/usr/bin/env python3
"""The boto3 way to clean stale multipart uploads, as its docs show: a ListMultipartUploads
paginator and one AbortMultipartUpload call per upload initiated before a cutoff.

Credentials and region come from the environment, as for any boto3 script.
"""

import argparse
import datetime

import boto3
from botocore.config import Config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--older-than", required=True, help="UTC, YYYY-MM-DDTHH:MM:SS")
    args = parser.parse_args()

    cutoff = datetime.datetime.fromisoformat(args.older_than).replace(tzinfo=datetime.timezone.utc)
    s3 = boto3.client(
        "s3", endpoint_url=args.endpoint, config=Config(s3={"addressing_style": "path"})
    )
    aborted = 0
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=args.bucket):
        for upload in page.get("Uploads", []):
            if upload["Initiated"] < cutoff:
                s3.abort_multipart_upload(
                    Bucket=args.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted += 1
    print(aborted)


if __name__ == "__main__":
    main()
