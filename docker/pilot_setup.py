#!/usr/bin/python3
"""Set up a provgate pilot: contributor and licensee keys, a contract, a sample dataset, an enrolled sidecar key.

    pilot_setup.py --registry http://registry:8700 \\
        --admin-token-file /registry/admin-token --s3-endpoint http://minio:9000 \\
        --state /pilot --contract did:example:pilot --samples 256 \\
        --sidecar-key /sidecar-state/sidecar.jwk --enrolment-out /sidecar-state/enrolment.jws

Idempotent, so a restarted compose service does nothing twice:
1. a contributor key and a licensee key (provgate keygen) in
   STATE/contributor.jwk and STATE/licensee.jwk;
2. the contract (provgate contract create) naming both, unless the
   registry has it;
3. a deterministic sample dataset in STATE/data (SAMPLES files of random
   sizes around --size, seeded), contributed with provgate contribute
   (which skips objects the log already holds);
4. with --sidecar-key: the sidecar's key (provgate keygen, if missing; the
   sidecar finds it in its state dir as sidecar.jwk) and the licensee's
   enrolment of it (provgate enroll) at --enrolment-out, which the sidecar
   reads with --enrolment. Without an enrolment the registry gives the
   sidecar no token.
The bucket must exist (the compose file's createbucket service makes it).
Used by docker/compose.yaml and by examples/pytorch/e2e_test.go.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

CONTRIBUTOR = "did:example:contributor-1"


def keygen(provgate, key, pub):
    """Make a key with provgate keygen unless it exists; return its public JWK."""
    if not os.path.exists(key):
        out = run([provgate, "keygen", "--out", key], capture_output=True, text=True).stdout
        with open(pub, "w") as f:
            f.write(out)
    with open(pub) as f:
        return json.load(f)["jwk"]


def run(args, **kw):
    print("+ " + " ".join(args), file=sys.stderr, flush=True)
    return subprocess.run(args, check=True, **kw)


def wait_for(url, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except (urllib.error.URLError, OSError) as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"pilot: {url} not reachable after {timeout}s: {e}")
            time.sleep(0.5)


def contract_exists(registry, cid):
    try:
        with urllib.request.urlopen(f"{registry}/contracts/{urllib.parse.quote(cid, safe=':')}", timeout=10):
            return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


def make_dataset(root, n, size, seed):
    """n files under root/part-NN/, sizes in [size/2, 3*size/2), bytes from
    a seeded generator: the same arguments give the same files."""
    rng = random.Random(seed)
    for i in range(n):
        path = os.path.join(root, "part-%02d" % (i % 8), "sample-%06d.bin" % i)
        length = rng.randrange(max(size // 2, 1), max(size * 3 // 2, 2))
        data = rng.randbytes(length)
        if os.path.exists(path) and os.path.getsize(path) == length:
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--provgate", default="provgate", help="the provgate binary")
    p.add_argument("--registry", required=True)
    p.add_argument("--admin-token-file", required=True)
    p.add_argument("--s3-endpoint", required=True)
    p.add_argument("--state", required=True, help="directory for the contributor key, contract file and data")
    p.add_argument("--contract", default="did:example:pilot")
    p.add_argument("--bucket", default="datasets")
    p.add_argument("--prefix", help="origin key prefix (default: derived from the contract id, so that contracts sharing a bucket never overwrite each other's objects)")
    p.add_argument("--mode", default="marketplace", choices=["marketplace", "self-hosted"])
    p.add_argument("--purpose", default="pilot-training")
    p.add_argument("--price-usd", type=float, default=0.0005, help="price per sample")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--size", type=int, default=16 << 10, help="mean sample size in bytes")
    p.add_argument("--encoding", default="zstd", choices=["identity", "gzip", "zstd"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--wait", type=float, default=120, help="seconds to wait for the registry")
    p.add_argument("--licensee", default="did:example:licensee-1", help="the licensee the contract names")
    p.add_argument("--licensee-max-samples", type=int, default=0, help="the licensee's quota in samples (0: the contract's)")
    p.add_argument("--sidecar-key", help="the sidecar's key file (made with provgate keygen if missing) to enrol")
    p.add_argument("--enrolment-out", help="where to write the enrolment (default: STATE/enrolment.jws)")
    args = p.parse_args(argv)

    if args.prefix is None:
        args.prefix = "".join(c if c.isalnum() or c in "-._" else "-" for c in args.contract) + "/"
    os.makedirs(args.state, exist_ok=True)
    wait_for(args.registry + "/.well-known/jwks.json", args.wait)
    deadline = time.monotonic() + args.wait
    while not os.path.exists(args.admin_token_file):
        if time.monotonic() > deadline:
            raise SystemExit(f"pilot: no admin token at {args.admin_token_file}")
        time.sleep(0.5)

    key = os.path.join(args.state, "contributor.jwk")
    jwk = keygen(args.provgate, key, os.path.join(args.state, "contributor.pub.json"))
    licensee_key = os.path.join(args.state, "licensee.jwk")
    licensee_jwk = keygen(args.provgate, licensee_key, os.path.join(args.state, "licensee.pub.json"))

    if not contract_exists(args.registry, args.contract):
        c = {
            "contract_id": args.contract,
            "version": time.strftime("%Y-%m-%d"),
            "license": "cc-by-4.0",
            "pricing": {"unit": "sample", "price_usd": args.price_usd},
            "usage": {"purposes": [args.purpose], "retention_days": 30, "redistribution": False},
            "contributors": [{"id": CONTRIBUTOR, "jwks": {"keys": [jwk]}}],
            "licensees": [{"id": args.licensee, "jwks": {"keys": [licensee_jwk]},
                           "terms": {"purposes": [args.purpose], "max_samples": args.licensee_max_samples}}],
            "origin": {"bucket": args.bucket, "prefix": args.prefix, "mode": args.mode},
        }
        path = os.path.join(args.state, "contract.json")
        with open(path, "w") as f:
            json.dump(c, f, indent=2)
        run([args.provgate, "contract", "create", "--registry", args.registry,
             "--admin-token-file", args.admin_token_file, "--file", path])

    data = os.path.join(args.state, "data")
    make_dataset(data, args.samples, args.size, args.seed)
    run([args.provgate, "contribute", "--registry", args.registry, "--contract", args.contract, "--key", key,
         "--s3-endpoint", args.s3_endpoint, "--bucket", args.bucket, "--encoding", args.encoding, data])
    enrolment = None
    if args.sidecar_key:
        sidecar_dir = os.path.dirname(os.path.abspath(args.sidecar_key))
        os.makedirs(sidecar_dir, mode=0o700, exist_ok=True)
        keygen(args.provgate, args.sidecar_key, os.path.join(sidecar_dir, "sidecar.pub.json"))
        enrolment = args.enrolment_out or os.path.join(args.state, "enrolment.jws")
        run([args.provgate, "enroll", "--licensee", args.licensee, "--contract", args.contract, "--key", licensee_key,
             "--sidecar-key", args.sidecar_key, "--out", enrolment])
    print(json.dumps({"contract": args.contract, "data": data, "samples": args.samples, "enrolment": enrolment}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
