#!/usr/bin/python3
"""DataLoader samples/s through the sidecar vs. the same loader on local files.

    /usr/bin/python3 examples/pytorch/bench_loader.py \\
        --sidecar http://127.0.0.1:8477 --contract ID --dir /path/to/decoded \\
        --workers 4 --batch-size 64 --epochs 3

--dir holds the contract's decoded objects as files named by their object
names (what `provgate contribute` was given). Both loaders use the same
manifest, the same (seed, epoch) sampler, batch size, workers and transform;
the only difference is where the bytes come from: one batch read per batch
from the sidecar (warm cache, metering on), or open()/read() per sample.
Each side runs one warm-up epoch (sidecar cache, page cache), then the
measured epochs, alternating sidecar and local; the best epoch of each
counts. Prints both rates and the ratio sidecar/local (target >= 0.8).
"""

import argparse
import json
import os
import sys
import time

try:
    import provgate_torch  # noqa: F401  (installed: pip install ./python)
except ImportError:
    # Run from a checkout without installing it: the package in python/.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

from torch.utils.data import Dataset  # noqa: E402

from provgate_torch import EpochSampler, ProvgateDataset, make_loader  # noqa: E402


def touch(data, sample):
    """The transform both sides run: cheap, but it must see the bytes."""
    return len(data)


class LocalDataset(Dataset):
    """The baseline: the same samples read from local files."""

    def __init__(self, root, samples, transform):
        self.root = root
        self.samples = samples
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def _read(self, s):
        with open(os.path.join(self.root, s.name), "rb") as f:
            return self.transform(f.read(), s)

    def __getitem__(self, index):
        if isinstance(index, (list, tuple)):
            return [self._read(self.samples[i]) for i in index]
        return self._read(self.samples[index])

    def set_epoch(self, epoch):
        pass


def sum_sizes(batch):
    return sum(batch)


def run_epoch(ds, sampler, epoch, args):
    sampler.set_epoch(epoch)
    ds.set_epoch(epoch)
    loader = make_loader(ds, sampler, args.batch_size, num_workers=args.workers, collate_fn=sum_sizes)
    start = time.perf_counter()
    nbytes = sum(loader)
    return time.perf_counter() - start, nbytes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sidecar", default=os.environ.get("PROVGATE_SIDECAR_URL", "http://127.0.0.1:8477"))
    p.add_argument("--contract", required=True)
    p.add_argument("--dir", required=True, help="the decoded objects as local files")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="measured epochs per side (after one warm-up)")
    p.add_argument("--small-sample", type=int, default=1 << 20, help="samples above this size are read by GET, not batch")
    p.add_argument("--verify", action="store_true", help="also check each sample's sha256 in the client")
    p.add_argument("--prefetch", type=int, default=2, help="batch reads each worker keeps ahead (0: none)")
    p.add_argument("--zero-copy", action="store_true", help="hand the transform memoryviews, not bytes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    remote = ProvgateDataset(args.contract, url=args.sidecar, job="bench-loader", verify=args.verify, transform=touch,
                             small_sample=args.small_sample, prefetch=args.prefetch, zero_copy=args.zero_copy)
    local = LocalDataset(args.dir, remote.samples, touch)
    n = len(remote)
    want = sum(s.size for s in remote.samples)
    sampler = EpochSampler(n, seed=1, rank=0, world_size=1)

    best = {"sidecar": float("inf"), "local": float("inf")}
    for epoch in range(args.epochs + 1):
        for side, ds in (("sidecar", remote), ("local", local)):
            secs, got = run_epoch(ds, sampler, epoch, args)
            if got != want:
                print(f"bench: {side} epoch {epoch} read {got} bytes, manifest says {want}", file=sys.stderr)
                return 1
            if epoch > 0:  # epoch 0 warms the caches
                best[side] = min(best[side], secs)
        remote.end_epoch(epoch)

    out = {
        "samples": n,
        "bytes": want,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "client_verify": args.verify,
        "small_sample": args.small_sample,
        "prefetch": args.prefetch,
        "zero_copy": args.zero_copy,
        "sidecar_samples_per_s": n / best["sidecar"],
        "local_samples_per_s": n / best["local"],
    }
    out["ratio"] = out["sidecar_samples_per_s"] / out["local_samples_per_s"]
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{n} samples, {want} bytes, {args.workers} workers, batch {args.batch_size}")
        print(f"sidecar: {out['sidecar_samples_per_s']:.0f} samples/s")
        print(f"local:   {out['local_samples_per_s']:.0f} samples/s")
        print(f"ratio sidecar/local: {out['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
