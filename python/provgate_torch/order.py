"""Deterministic epoch order, sharding and resumption.

Pure functions, no torch and no network, so that they can be tested alone
and reproduced in any language:

* ``permutation(n, seed, epoch)`` is a Fisher-Yates shuffle driven by
  SplitMix64 seeded with ``seed`` and ``epoch``. It depends on nothing
  else: not on the number of workers, ranks or the Python version.
* ``rank_indices`` splits an epoch's global order across distributed ranks
  (position ``p`` goes to rank ``p % world_size``), padding by wrapping
  around (or dropping the tail) so that every rank gets as many samples.
* ``worker_chunks`` splits a rank's remaining indices into chunks of the
  DataLoader's batch size and deals them round-robin to the workers. The
  DataLoader collects batches from its workers round-robin too, so the
  loader yields the rank's order exactly, whatever ``num_workers`` is.
* A resume point is ``(epoch, index)``: ``index`` counts the samples of the
  epoch's global (all-ranks) order already consumed.
"""

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


class SplitMix64:
    """SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed 64-bit
    generator whose output is fully specified by its 64-bit state."""

    __slots__ = ("state",)

    def __init__(self, state):
        self.state = state & _MASK64

    def next(self):
        self.state = (self.state + _GOLDEN) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def below(self, bound):
        """An unbiased integer in [0, bound) (rejection sampling)."""
        if bound <= 0:
            raise ValueError("bound must be positive")
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:
            r = self.next()
            if r < limit:
                return r % bound


def epoch_state(seed, epoch):
    """The generator state for (seed, epoch): both are mixed, so that
    (seed, epoch+1) and (seed+1, epoch) give unrelated orders."""
    if seed < 0 or epoch < 0:
        raise ValueError("seed and epoch must be non-negative")
    g = SplitMix64(seed)
    s = g.next()
    return SplitMix64(s ^ ((epoch * _GOLDEN) & _MASK64)).next()


def permutation(n, seed, epoch):
    """The shuffled order of range(n) for (seed, epoch)."""
    order = list(range(n))
    rng = SplitMix64(epoch_state(seed, epoch))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def epoch_order(n, seed, epoch, shuffle=True):
    """The global order of one epoch: shuffled, or 0..n-1."""
    return permutation(n, seed, epoch) if shuffle else list(range(n))


def per_rank(n, world_size, drop_last=False):
    """How many samples each rank gets from n."""
    if world_size < 1:
        raise ValueError("world_size must be at least 1")
    if drop_last:
        return n // world_size
    return -(-n // world_size)


def padded(order, world_size, drop_last=False):
    """The global order made divisible by world_size: the tail dropped, or
    the head repeated (as torch's DistributedSampler does)."""
    total = per_rank(len(order), world_size, drop_last) * world_size
    if total <= len(order):
        return order[:total]
    if not order:
        return []
    out = list(order)
    while len(out) < total:
        out.extend(order[: total - len(out)])
    return out


def consumed_by_rank(index, rank, world_size):
    """How many of rank's samples lie before global position index."""
    if index <= rank:
        return 0
    return (index - rank + world_size - 1) // world_size


def rank_indices(order, rank, world_size, start=0, drop_last=False):
    """The indices of rank from an epoch's global order, skipping the
    samples before global position start."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    if start < 0:
        raise ValueError("start must be non-negative")
    mine = padded(order, world_size, drop_last)[rank::world_size]
    return mine[consumed_by_rank(start, rank, world_size):]


def chunks(items, size):
    """items cut into lists of size (the last may be shorter)."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    return [items[i : i + size] for i in range(0, len(items), size)]


def worker_chunks(items, worker, num_workers, chunk):
    """The chunks of items that worker (of num_workers) produces: chunk k
    goes to worker k % num_workers."""
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} outside {num_workers} workers")
    return chunks(items, chunk)[worker::num_workers]
