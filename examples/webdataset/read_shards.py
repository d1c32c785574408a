"""Read WebDataset shards through the provgate sidecar, WebDataset-style.

Each shard URL (a brace range such as shard-{000000..000099}.tar expands to
one URL per shard, as webdataset.WebDataset does) is streamed over HTTP into
Python's standard tarfile in stream mode ("r|"), and members are grouped
into samples by key (the path up to the first dot of the last segment).
With the webdataset package installed, webdataset.WebDataset(url) reads the
same URLs; the sidecar serves each shard whole, verified, and bills it by
its attested sample count.

    python3 read_shards.py URL [--job JOB] [--epoch N]

Prints one JSON line per sample: {"shard", "key", "members": {ext: sha256}}.
"""

import argparse
import hashlib
import json
import re
import sys
import tarfile
import urllib.request


def expand(url):
    """Expand the first {a..b} brace range of url (zero-padded like a)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", url)
    if not m:
        return [url]
    a, b = m.group(1), m.group(2)
    out = []
    for i in range(int(a), int(b) + 1):
        out.extend(expand(url[: m.start()] + str(i).zfill(len(a)) + url[m.end():]))
    return out


def samples(url, job, epoch):
    req = urllib.request.Request(url, headers={"X-Provgate-Job": job, "X-Provgate-Epoch": str(epoch)})
    with urllib.request.urlopen(req, timeout=60) as resp:
        with tarfile.open(fileobj=resp, mode="r|") as tf:
            cur, key = {}, None
            for info in tf:
                if not info.isreg():
                    raise ValueError("%s: member %s is not a regular file" % (url, info.name))
                d, _, base = info.name.rpartition("/")
                k, dot, ext = base.partition(".")
                if not dot:
                    continue
                k = (d + "/" if d else "") + k
                if key is not None and k != key:
                    yield key, cur
                    cur = {}
                key = k
                cur[ext] = hashlib.sha256(tf.extractfile(info).read()).hexdigest()
            if key is not None:
                yield key, cur


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--job", default="webdataset")
    p.add_argument("--epoch", type=int, default=0)
    a = p.parse_args()
    for url in expand(a.url):
        shard = url.rsplit("/", 1)[-1]
        for key, members in samples(url, a.job, a.epoch):
            print(json.dumps({"shard": shard, "key": key, "members": members}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
