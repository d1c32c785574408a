#!/usr/bin/python3
"""A short training loop over a provgate sidecar.

    /usr/bin/python3 examples/pytorch/train_example.py \\
        --sidecar http://127.0.0.1:8477 --contract did:example:dataset-123 \\
        --epochs 2 --workers 4 --batch-size 32 --resume /tmp/resume.json

Each sample's bytes become a 256-bin byte histogram; a linear model learns
to tell whether a sample is longer than the median. The point is the data
path: the verified manifest gives len(), the sampler gives a (seed, epoch)
order, each batch is one batch read, set_epoch() feeds the sidecar's
per-epoch metering, end_epoch() closes the epoch's summary, and a resume
file written every --checkpoint-every batches lets a restarted job continue
from (epoch, sample index) without reading any sample twice.
"""

import argparse
import json
import os
import statistics
import sys

try:
    import provgate_torch  # noqa: F401  (installed: pip install ./python)
except ImportError:
    # Run from a checkout without installing it: the package in python/.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import torch  # noqa: E402

from provgate_torch import EpochSampler, ProvgateDataset, ProvgateError, Sidecar, make_loader  # noqa: E402


def features(data, sample):
    """bytes -> (256-bin histogram, size)."""
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    h = torch.bincount(t.long(), minlength=256).float()
    return h / max(len(data), 1), float(sample.size)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sidecar", default=os.environ.get("PROVGATE_SIDECAR_URL", "http://127.0.0.1:8477"))
    p.add_argument("--contract", default=os.environ.get("PROVGATE_CONTRACT"), required="PROVGATE_CONTRACT" not in os.environ)
    p.add_argument("--job", default=os.environ.get("PROVGATE_JOB", "train-example"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", help="resume file (JSON {seed, epoch, index}), read at start and written as training goes")
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for the sidecar to be ready")
    p.add_argument("--checkpoint-every", type=int, default=10, help="batches between resume-file writes")
    args = p.parse_args(argv)

    try:
        if args.wait > 0:
            Sidecar(args.contract, url=args.sidecar).wait_ready(timeout=args.wait)
        ds = ProvgateDataset(args.contract, url=args.sidecar, job=args.job, transform=features)
    except ProvgateError as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    if len(ds) == 0:
        print("train: the contract's verified manifest is empty", file=sys.stderr)
        return 1
    median = statistics.median(s.size for s in ds.samples)
    sampler = EpochSampler(len(ds), seed=args.seed)
    first_epoch = 0
    if args.resume and os.path.exists(args.resume):
        with open(args.resume) as f:
            state = json.load(f)
        sampler.load_state_dict(state)
        first_epoch = state["epoch"]
        print(f"resuming at epoch {state['epoch']}, sample {state['index']}")

    torch.manual_seed(args.seed)
    model = torch.nn.Linear(256, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    for epoch in range(first_epoch, args.epochs):
        if epoch != first_epoch:
            sampler.set_epoch(epoch)
        ds.set_epoch(epoch)  # before the loader's workers start: X-Provgate-Epoch
        consumed = sampler.start_index
        total, seen = 0.0, 0
        loader = make_loader(ds, sampler, args.batch_size, num_workers=args.workers)
        for step, (x, size) in enumerate(loader, start=1):
            y = (size > median).float().unsqueeze(1)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            seen += len(x)
            consumed += len(x) * sampler.world_size
            if args.resume and step % args.checkpoint_every == 0:
                write_resume(args.resume, sampler.state_dict(consumed))
        summary = ds.end_epoch(epoch)
        if args.resume:
            write_resume(args.resume, {"seed": args.seed, "epoch": epoch + 1, "index": 0})
        print(f"epoch {epoch}: {seen} samples, mean loss {total / max(seen, 1):.4f}, metered: {json.dumps(summary)}")
    return 0


def write_resume(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
