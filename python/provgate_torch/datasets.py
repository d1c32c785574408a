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

Each worker reads its next batches ahead in one background thread with its
own keep-alive connection (``prefetch`` batches ready, one more under way).
With ``announce`` (the default) the epoch's order is sent to the sidecar
when the epoch starts (``POST .../epochs/{n}/order``), so that the sidecar
fetches cold objects from the origin ahead of the reads; that bills
nothing, only the reads do.

``set_epoch(n)`` must be called before each epoch's iterator is created
(workers get a copy of the dataset then, so use persistent_workers=False):
the epoch goes to the sidecar as X-Provgate-Epoch for per-epoch metering.
"""

import logging
import os
import queue
import threading

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from . import order
from .client import Sidecar
from .errors import ProtocolError, ProvgateError, Redacted

log = logging.getLogger("provgate_torch")

# Samples up to this size are read in batch requests; bigger ones stream
# through their own GET.
DEFAULT_SMALL_SAMPLE = 1 << 20
# Bounds on one batch request (the sidecar's defaults are 1024 / 256 MiB).
DEFAULT_BATCH_NAMES = 256
DEFAULT_BATCH_BYTES = 32 << 20
# Batch reads each worker keeps ahead of its consumer (0: none).
DEFAULT_PREFETCH = 2


def identity(data, sample):
    """The default transform: the sample's bytes as they are."""
    return data


def announce_order(client, epoch, samples):
    """Tell the sidecar the epoch's read order (best effort: a sidecar that
    cannot take it only loses the read-ahead, never the reads)."""
    if not samples:
        return
    try:
        client.announce_order(epoch, samples)
    except (ProvgateError, OSError) as e:
        client.close()
        log.warning("provgate: announcing epoch %d's order failed (no read-ahead): %s", epoch, e)


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
    ones one by one, returning bytes (read-only memoryviews with zero_copy),
    or None for a redacted sample when skipping."""

    def __init__(self, client, small_sample, batch_names, batch_bytes, zero_copy=False):
        self.client = client
        self.small_sample = small_sample
        self.batch_names = batch_names
        self.batch_bytes = batch_bytes
        self.zero_copy = zero_copy

    def clone(self):
        """A reader with its own connection, for another thread."""
        return _Reader(self.client.clone(), self.small_sample, self.batch_names, self.batch_bytes, self.zero_copy)

    def read(self, samples, epoch, skip_redacted=False):
        """The bytes of samples, in order; None for a redacted sample when
        skip_redacted, else Redacted is raised."""
        out = [None] * len(samples)
        group, size = [], 0

        def flush():
            if group:
                bodies = self.client.get_batch([samples[i] for i in group], epoch=epoch, redacted_as_none=skip_redacted,
                                               zero_copy=self.zero_copy)
                for i, b in zip(group, bodies):
                    out[i] = b
                group.clear()

        for i, s in enumerate(samples):
            if s.size > self.small_sample:
                try:
                    body = self.client.get(s.name, epoch=epoch, sample=s)
                    out[i] = memoryview(body) if self.zero_copy else body
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


class _Prefetcher:
    """Reads a known sequence of sample lists ahead of need.

    One background thread per process (per DataLoader worker), with its own
    keep-alive connection, reads the chunks in order and keeps at most
    depth of them ready, so that the next batch request is under way while
    the worker transforms and hands over the previous one. next() gives the
    chunks in order; an error is raised by next() at the chunk that failed,
    after the chunks before it, as a synchronous read would. Reading stops
    at the first error or at close(); what has been read ahead by then was
    served (and metered) but not delivered.
    """

    def __init__(self, reader, chunks, epoch, skip_redacted, depth, announce=None):
        if depth < 1:
            raise ValueError("prefetch depth must be at least 1")
        self._reader = reader.clone()
        self._chunks = chunks
        self._epoch = epoch
        self._skip = skip_redacted
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._taken = 0
        self._announce = announce
        self._thread = threading.Thread(target=self._run, name="provgate-prefetch", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            if self._announce:
                # On the read-ahead connection, before the first read.
                announce_order(self._reader.client, self._epoch, self._announce)
            for chunk in self._chunks:
                if self._stop.is_set():
                    return
                try:
                    item = (self._reader.read(chunk, self._epoch, self._skip), None)
                except BaseException as e:  # handed to the consumer
                    item = (None, e)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item[1] is not None:
                    return
        finally:
            self._reader.client.close()

    def next(self):
        """The bodies of the next chunk (as _Reader.read gives them)."""
        if self._taken >= len(self._chunks):
            raise ProtocolError("read past the prefetched chunks")
        while True:
            try:
                out, err = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise ProtocolError("prefetch thread ended without a result") from None
        self._taken += 1
        if err is not None:
            self._stop.set()
            raise err
        return out

    def close(self):
        """Stop reading ahead; the thread ends after its current request."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


class _MapPlan:
    """make_loader's batches as one DataLoader worker will be asked for
    them. The DataLoader deals the sampler's batches to its workers
    round-robin (batch k to worker k % num_workers), so worker w is asked
    for batches w, w + n, ... of the EpochSampler's deterministic order.
    Once the worker is asked for the first of them, the rest are read
    ahead. A request for other indices than the plan's next (a DataLoader
    that deals otherwise, a persistent worker in its next epoch) ends the
    read-ahead for good and is read directly."""

    def __init__(self, dataset, sampler, batch_size, drop_last, depth):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.batches = [list(b) for b in list(BatchSampler(sampler, batch_size, drop_last))[worker::workers]]
        self.dataset = dataset
        self.depth = depth
        self.pos = 0
        self.prefetcher = None
        self.done = not self.batches

    def take(self, indices):
        """The bodies of indices if they are the plan's next batch, else
        None (and the plan is abandoned)."""
        if self.done:
            return None
        if self.pos >= len(self.batches) or list(indices) != self.batches[self.pos]:
            self.close()
            return None
        if self.prefetcher is None:
            chunks = [[self.dataset.samples[i] for i in b] for b in self.batches[self.pos:]]
            self.prefetcher = _Prefetcher(self.dataset._reader, chunks, self.dataset.epoch, False, self.depth)
        self.pos += 1
        try:
            return self.prefetcher.next()
        except BaseException:
            # The read-ahead stopped at this error; the worker's later
            # requests (a DataLoader worker goes on with its queue) are
            # read directly.
            self.close()
            raise

    def close(self):
        self.done = True
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None


class ProvgateDataset(Dataset):
    """Map-style dataset of a contract's verified manifest.

    transform(data: bytes, sample: Sample) -> item turns bytes into what the
    model wants (default: the bytes). manifest: a list of Sample to use
    instead of fetching it (all workers must agree on it).
    prefetch: batch reads each DataLoader worker keeps ready ahead of need
    (with make_loader and an EpochSampler; 0: none). zero_copy: transform
    gets a read-only memoryview into the batch response instead of bytes.
    announce: make_loader's loader sends each epoch's order to the sidecar
    when the epoch starts, for its read-ahead from the origin.
    """

    def __init__(self, contract, url=None, token=None, job=None, verify=True, transform=None, manifest=None,
                 small_sample=DEFAULT_SMALL_SAMPLE, batch_names=DEFAULT_BATCH_NAMES, batch_bytes=DEFAULT_BATCH_BYTES,
                 prefetch=DEFAULT_PREFETCH, zero_copy=False, announce=True):
        if prefetch < 0:
            raise ValueError("prefetch must be non-negative")
        self.client = Sidecar(contract, url=url, token=token, job=job, verify=verify)
        self.samples = list(manifest) if manifest is not None else self.client.manifest()
        self.transform = transform or identity
        self.epoch = 0
        self.prefetch = prefetch
        self.announce = announce
        self._announced = None  # (epoch, indices) last announced
        self._reader = _Reader(self.client, small_sample, batch_names, batch_bytes, zero_copy)
        self._loader_plan = None  # (sampler, batch_size, drop_last), set by make_loader
        self._plan = None
        self._plan_pid = None

    # A copy sent to a worker starts without the sender's read-ahead.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plan"] = None
        state["_announced"] = None
        state["_plan_pid"] = None
        return state

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
        plan = self._worker_plan()
        bodies = plan.take(indices) if plan is not None else None
        if bodies is None:
            bodies = self._reader.read(samples, self.epoch)
        return [self.transform(b, s) for b, s in zip(bodies, samples)]

    def _worker_plan(self):
        """The read-ahead plan of this DataLoader worker: only inside a
        worker (it lives for one epoch) of a loader made by make_loader."""
        if self.prefetch <= 0 or self._loader_plan is None or get_worker_info() is None:
            return None
        if self._plan is None or self._plan_pid != os.getpid():
            sampler, batch_size, drop_last = self._loader_plan
            self._plan = _MapPlan(self, sampler, batch_size, drop_last, self.prefetch)
            self._plan_pid = os.getpid()
        return self._plan


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


class _AnnouncingBatchSampler(BatchSampler):
    """A BatchSampler that, each time an epoch's iteration starts (in the
    loader's main process), announces the sampler's order to the sidecar."""

    def __init__(self, dataset, sampler, batch_size, drop_last):
        super().__init__(sampler, batch_size, drop_last)
        self.dataset = dataset

    def __iter__(self):
        # A DataLoader may start the sampler's iteration more than once per
        # epoch (torch 1.x does, to reset it): one announcement per order.
        s = self.sampler
        indices = s.indices() if isinstance(s, EpochSampler) else list(s)
        key = (self.dataset.epoch, indices)
        if key != self.dataset._announced:
            self.dataset._announced = key
            announce_order(self.dataset.client, self.dataset.epoch, [self.dataset.samples[i] for i in indices])
        return super().__iter__()


def make_loader(dataset, sampler, batch_size, num_workers=0, collate_fn=None, **kwargs):
    """A DataLoader that hands each batch of sampler's indices to
    dataset[indices] (one batch read) and collate_fn (default: torch's
    default_collate, bytes stay a list). For a ProvgateDataset with
    announce on, each epoch's order goes to the sidecar as it starts."""
    from torch.utils.data import default_collate

    if isinstance(dataset, ProvgateDataset) and isinstance(sampler, EpochSampler):
        # The order is deterministic: each worker can read its next
        # batches ahead (see _MapPlan).
        dataset._loader_plan = (sampler, batch_size, False)
    if isinstance(dataset, ProvgateDataset) and dataset.announce:
        batches = _AnnouncingBatchSampler(dataset, sampler, batch_size, drop_last=False)
    else:
        batches = BatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(dataset, sampler=batches, batch_size=None,
                      num_workers=num_workers, collate_fn=collate_fn or default_collate, **kwargs)


class ProvgateIterableDataset(IterableDataset):
    """The contract's samples in the (seed, epoch) order, sharded across
    distributed ranks and DataLoader workers, read in batch requests.

    batch_size must be the DataLoader's batch_size (1 when the loader has
    batch_size=None) for the loader to yield the rank's order exactly.
    skip_redacted: drop samples redacted since the manifest was read
    (451) instead of raising Redacted; the batches after one shift.
    prefetch: batch reads each worker keeps ready ahead of need (0: none).
    zero_copy: transform gets a read-only memoryview instead of bytes.
    announce: the first worker sends the rank's epoch order to the sidecar
    as the epoch starts, for its read-ahead from the origin.
    """

    def __init__(self, contract, url=None, token=None, job=None, verify=True, transform=None, manifest=None,
                 seed=0, shuffle=True, batch_size=1, rank=None, world_size=None, drop_last=False,
                 skip_redacted=False, small_sample=DEFAULT_SMALL_SAMPLE, batch_bytes=DEFAULT_BATCH_BYTES,
                 prefetch=DEFAULT_PREFETCH, zero_copy=False, announce=True):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if prefetch < 0:
            raise ValueError("prefetch must be non-negative")
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
        self.prefetch = prefetch
        self.announce = announce
        self._reader = _Reader(self.client, small_sample, max(batch_size, 1), batch_bytes, zero_copy)

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
        indices = self.rank_indices()
        announce = [self.samples[i] for i in indices] if self.announce and worker == 0 else None
        chunks = [[self.samples[i] for i in c] for c in order.worker_chunks(indices, worker, workers,
                                                                             self.batch_size)]
        if self.prefetch <= 0 or len(chunks) < 2:
            if announce:
                announce_order(self._reader.client, self.epoch, announce)
            for samples in chunks:
                yield from self._deliver(self._reader.read(samples, self.epoch, self.skip_redacted), samples)
            return
        ahead = _Prefetcher(self._reader, chunks, self.epoch, self.skip_redacted, self.prefetch, announce)
        try:
            for samples in chunks:
                yield from self._deliver(ahead.next(), samples)
        finally:
            ahead.close()

    def _deliver(self, bodies, samples):
        for b, s in zip(bodies, samples):
            if b is not None:
                yield self.transform(b, s)
