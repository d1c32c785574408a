#!/usr/bin/python3
"""Read a contract through a real sidecar with DataLoaders and check every
sample's bytes against the original files (used by e2e_test.go).

    e2e_check.py --sidecar URL --contract ID --data DIR --epochs 2 --workers 4

Epochs alternate between the map-style dataset (EpochSampler + batch
reads) and the IterableDataset (zero-copy batch bodies), both with --workers
worker processes reading ahead and client-side sha256 checks. Every epoch must deliver each manifest name
exactly once, byte for byte equal to DIR/name, in the (seed, epoch) order;
then the epoch is closed at the sidecar. Prints one JSON object: the
samples and bytes delivered per epoch, and the file the provgate_torch
package was imported from (the test runs this script with the interpreter of
a virtual environment the package was installed into: pip install ./python).
"""

import argparse
import json
import os
import sys
import warnings

from torch.utils.data import DataLoader

import provgate_torch
from provgate_torch import EpochSampler, ProvgateDataset, ProvgateIterableDataset, Sidecar, make_loader
from provgate_torch import order


def named(data, sample):
    return sample.name, data


def named_view(data, sample):
    """For zero_copy: data is a read-only memoryview into the batch
    response's buffer; a worker hands over bytes."""
    if not isinstance(data, memoryview):
        raise TypeError(f"zero_copy transform got {type(data).__name__}")
    return sample.name, bytes(data)


def as_list(batch):
    return list(batch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sidecar", required=True)
    p.add_argument("--contract", required=True)
    p.add_argument("--data", required=True, help="the original (decoded) files, named by object name")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--small-sample", type=int, default=1 << 20, help="bigger samples are read by GET, not batch")
    p.add_argument("--job", default="e2e")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--wait", type=float, default=60)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)

    Sidecar(args.contract, url=args.sidecar).wait_ready(timeout=args.wait)
    common = dict(url=args.sidecar, job=args.job, verify=True, transform=named, small_sample=args.small_sample)
    mapped = ProvgateDataset(args.contract, **common)
    samples = mapped.samples
    if not samples:
        print("e2e: empty manifest", file=sys.stderr)
        return 1
    names = [s.name for s in samples]
    on_disk = set()
    for dirpath, _, files in os.walk(args.data):
        for f in files:
            on_disk.add(os.path.relpath(os.path.join(dirpath, f), args.data).replace(os.sep, "/"))
    if set(names) != on_disk:
        print(f"e2e: manifest {len(names)} names != {len(on_disk)} files; "
              f"missing {sorted(on_disk - set(names))[:5]} extra {sorted(set(names) - on_disk)[:5]}", file=sys.stderr)
        return 1

    result = {"client": os.path.abspath(provgate_torch.__file__), "samples": len(samples), "bytes": sum(s.size for s in samples), "epochs": []}
    for epoch in range(args.epochs):
        want = [names[i] for i in order.permutation(len(names), args.seed, epoch)]
        if epoch % 2 == 0:
            kind = "map"
            sampler = EpochSampler(len(mapped), seed=args.seed, rank=0, world_size=1)
            sampler.set_epoch(epoch)
            mapped.set_epoch(epoch)
            loader = make_loader(mapped, sampler, args.batch_size, num_workers=args.workers, collate_fn=as_list)
            ds = mapped
        else:
            kind = "iterable"
            ds = ProvgateIterableDataset(args.contract, manifest=samples, seed=args.seed, batch_size=args.batch_size,
                                         rank=0, world_size=1, zero_copy=True, **{**common, "transform": named_view})
            ds.set_epoch(epoch)
            loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=as_list)
        got, nbytes = [], 0
        for batch in loader:
            for name, data in batch:
                with open(os.path.join(args.data, name), "rb") as f:
                    if f.read() != data:
                        print(f"e2e: epoch {epoch}: {name}: bytes differ from the original", file=sys.stderr)
                        return 1
                got.append(name)
                nbytes += len(data)
        if got != want:
            print(f"e2e: epoch {epoch} ({kind}): order differs from the (seed, epoch) order; "
                  f"{len(got)} samples, {len(set(got))} distinct", file=sys.stderr)
            return 1
        summary = ds.end_epoch(epoch)
        result["epochs"].append({"epoch": epoch, "loader": kind, "samples": len(got), "bytes": nbytes,
                                 "summary": summary})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
