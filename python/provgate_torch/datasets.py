"""PyTorch datasets over a provgate sidecar.

* ``ProvgateDataset``: map-style. ``len()`` is the verified manifest's;
  ``ds[i]`` is one GET; ``ds[[i, j, ...]]`` is one batch read (use it with
  ``EpochSampler`` in a ``BatchSampler`` and ``batch_size=None``, see
  ``make_loader``), so small samples cost one round trip per batch.
* ``EpochSampler``: the deterministic (seed, epoch) order, split across
  distributed ranks, resumable from (epoch, sample index).
* ``ProvgateIterableDataset``: the same order, sharded across ranks and
  DataLoader workers, read in batches; with the DataLoader's batch size
  passed as ``batch_size`` the loader yields the rank's order exactly,
  whatever ``num_workers`` is.

``set_epoch(n)`` must be called before each epoch's iterator is created
(workers get a copy of the dataset then, so use persistent_workers=False):
the epoch goes to the sidecar as X-Provgate-Epoch for per-epoch metering.
"""

import os

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from . import order
from .client import Sidecar
from .errors import Redacted

# Samples up to this size are read in batch requests; bigger ones stream
# through their own GET.
DEFAULT_SMALL_SAMPLE = 1 << 20
# Bounds on one batch request (the sidecar's defaults are 1024 / 256 MiB).
DEFAULT_BATCH_NAMES = 256
DEFAULT_BATCH_BYTES = 32 << 20


def identity(data, sample):
    """The default transform: the sample's bytes as they are."""
    return data


def dist_rank_world(rank=None, world_size=None):
    """rank and world size: given, else torch.distributed's, else $RANK /
    $WORLD_SIZE, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class _Reader:
    """Reads samples through a Sidecar: small ones in batch requests, big
    ones one by one, returning bytes (or a Redacted error when skipping)."""

    def __init__(self, client, small_sample, batch_names, batch_bytes):
        self.client = client
        self.small_sample = small_sample
        self.batch_names = batch_names
        self.batch_bytes = batch_bytes

    def read(self, samples, epoch, skip_redacted=False):
        """The bytes of samples, in order; None for a redacted sample when
        skip_redacted, else Redacted is raised."""
        out = [None] * len(samples)
        group, size = [], 0

        def flush():
            if group:
                bodies = self.client.get_batch([samples[i] for i in group], epoch=epoch, redacted_as_none=skip_redacted)
                for i, b in zip(group, bodies):
                    out[i] = b
                group.clear()

        for i, s in enumerate(samples):
            if s.size > self.small_sample:
                try:
                    out[i] = self.client.get(s.name, epoch=epoch, sample=s)
                except Redacted:
                    if not skip_redacted:
                        raise
                continue
            if len(group) >= self.batch_names or (group and size + s.size > self.batch_bytes):
                flush()
                size = 0
            group.append(i)
            size += s.size
        flush()
        return out


class ProvgateDataset(Dataset):
    """Map-style dataset of a contract's verified manifest.

    transform(data: bytes, sample: Sample) -> item turns bytes into what the
    model wants (default: the bytes). manifest: a list of Sample to use
    instead of fetching it (all workers must agree on it).
    """

    def __init__(self, contract, url=None, token=None, job=None, verify=True, transform=None, manifest=None,
                 small_sample=DEFAULT_SMALL_SAMPLE, batch_names=DEFAULT_BATCH_NAMES, batch_bytes=DEFAULT_BATCH_BYTES):
        self.client = Sidecar(contract, url=url, token=token, job=job, verify=verify)
        self.samples = list(manifest) if manifest is not None else self.client.manifest()
        self.transform = transform or identity
        self.epoch = 0
        self._reader = _Reader(self.client, small_sample, batch_names, batch_bytes)

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def end_epoch(self, epoch=None):
        """Close the epoch's metering summary at the sidecar."""
        return self.client.end_epoch(self.epoch if epoch is None else epoch)

    def __getitem__(self, index):
        if isinstance(index, (list, tuple)):
            return self.__getitems__(index)
        s = self.samples[index]
        return self.transform(self.client.get(s.name, epoch=self.epoch, sample=s), s)

    def __getitems__(self, indices):
        """A batch of samples through batch reads (torch >= 2 calls this
        itself; with torch 1.x use make_loader)."""
        samples = [self.samples[i] for i in indices]
        return [self.transform(b, s) for b, s in zip(self._reader.read(samples, self.epoch), samples)]


class EpochSampler(Sampler):
    """The (seed, epoch) order of range(n), this rank's share, resumable.

    Position p of the epoch's global order goes to rank p % world_size, so
    the union over ranks is the global order. start_index resumes an
    epoch: the number of the global order's samples already consumed.
    """

    def __init__(self, n, seed=0, shuffle=True, rank=None, world_size=None, drop_last=False):
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.drop_last = drop_last
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch, start_index=0):
        self.epoch = int(epoch)
        self.start_index = int(start_index)

    def state_dict(self, consumed):
        """A resume point after consumed samples of this epoch (global
        count, summed over ranks)."""
        return {"seed": self.seed, "epoch": self.epoch, "index": int(consumed)}

    def load_state_dict(self, state):
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"resume point is for seed {state['seed']}, sampler has {self.seed}")
        self.set_epoch(state["epoch"], state["index"])

    def indices(self):
        o = order.epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        return order.rank_indices(o, self.rank, self.world_size, self.start_index, self.drop_last)

    def __iter__(self):
        return iter(self.indices())

    def __len__(self):
        total = order.per_rank(self.n, self.world_size, self.drop_last)
        return total - order.consumed_by_rank(self.start_index, self.rank, self.world_size)


def make_loader(dataset, sampler, batch_size, num_workers=0, collate_fn=None, **kwargs):
    """A DataLoader that hands each batch of sampler's indices to
    dataset[indices] (one batch read) and collate_fn (default: torch's
    default_collate, bytes stay a list)."""
    from torch.utils.data import default_collate

    return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None,
                      num_workers=num_workers, collate_fn=collate_fn or default_collate, **kwargs)


class ProvgateIterableDataset(IterableDataset):
    """The contract's samples in the (seed, epoch) order, sharded across
    distributed ranks and DataLoader workers, read in batch requests.

    batch_size must be the DataLoader's batch_size (1 when the loader has
    batch_size=None) for the loader to yield the rank's order exactly.
    skip_redacted: drop samples redacted since the manifest was read
    (451) instead of raising Redacted; the batches after one shift.
    """

    def __init__(self, contract, url=None, token=None, job=None, verify=True, transform=None, manifest=None,
                 seed=0, shuffle=True, batch_size=1, rank=None, world_size=None, drop_last=False,
                 skip_redacted=False, small_sample=DEFAULT_SMALL_SAMPLE, batch_bytes=DEFAULT_BATCH_BYTES):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.client = Sidecar(contract, url=url, token=token, job=job, verify=verify)
        self.samples = list(manifest) if manifest is not None else self.client.manifest()
        self.transform = transform or identity
        self.seed = seed
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.drop_last = drop_last
        self.skip_redacted = skip_redacted
        self.epoch = 0
        self.start_index = 0
        self._reader = _Reader(self.client, small_sample, max(batch_size, 1), batch_bytes)

    def set_epoch(self, epoch, start_index=0):
        self.epoch = int(epoch)
        self.start_index = int(start_index)

    def state_dict(self, consumed):
        return {"seed": self.seed, "epoch": self.epoch, "index": int(consumed)}

    def load_state_dict(self, state):
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"resume point is for seed {state['seed']}, dataset has {self.seed}")
        self.set_epoch(state["epoch"], state["index"])

    def end_epoch(self, epoch=None):
        return self.client.end_epoch(self.epoch if epoch is None else epoch)

    def rank_indices(self):
        o = order.epoch_order(len(self.samples), self.seed, self.epoch, self.shuffle)
        return order.rank_indices(o, self.rank, self.world_size, self.start_index, self.drop_last)

    def __len__(self):
        return len(self.rank_indices())

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for chunk in order.worker_chunks(self.rank_indices(), worker, workers, self.batch_size):
            samples = [self.samples[i] for i in chunk]
            for b, s in zip(self._reader.read(samples, self.epoch, self.skip_redacted), samples):
                if b is not None:
                    yield self.transform(b, s)
