"""Reads a contract through the sidecar's S3 facade with boto3, unchanged
but for endpoint_url, and prints what it saw as JSON."""
import hashlib
import json
import sys

import boto3
from botocore.config import Config

endpoint, bucket, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id="local",
    aws_secret_access_key="local-secret",
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
out = {"objects": {}, "pages": 0}
token = None
while True:
    kw = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 7}
    if token:
        kw["ContinuationToken"] = token
    page = s3.list_objects_v2(**kw)
    out["pages"] += 1
    for o in page.get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        out["objects"][o["Key"]] = {"size": o["Size"], "sha256": hashlib.sha256(body).hexdigest()}
    if not page.get("IsTruncated"):
        break
    token = page["NextContinuationToken"]
first = sorted(out["objects"])[0]
head = s3.head_object(Bucket=bucket, Key=first)
out["head_length"] = head["ContentLength"]
part = s3.get_object(Bucket=bucket, Key=first, Range="bytes=2-5")["Body"].read()
out["range_sha256"] = hashlib.sha256(part).hexdigest()
try:
    s3.get_object(Bucket=bucket, Key=prefix + "no-such-object")
    out["missing"] = "found"
except s3.exceptions.NoSuchKey:
    out["missing"] = "NoSuchKey"
json.dump(out, sys.stdout)
