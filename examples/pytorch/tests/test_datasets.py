"""The datasets inside real DataLoaders (forked worker processes) against a
loopback fake sidecar: order independent of the number of workers, rank
sharding, resumption, epoch headers, batch reads, errors from workers."""

import hashlib
import unittest
import warnings

import torch  # noqa: F401  (the test must fail, not skip, without torch)
from torch.utils.data import DataLoader

from provgate_torch import EpochSampler, ProvgateDataset, ProvgateIterableDataset, Redacted, make_loader
from provgate_torch import order

from .fake_sidecar import FakeSidecar


def make_objects(n=37, big=(5, 11)):
    out = {}
    for i in range(n):
        size = 3000 if i in big else 10 + 7 * i
        out["s/%03d.bin" % i] = hashlib.sha256(b"%d" % i).digest() * (size // 32) + bytes([i]) * (size % 32)
    return out


OBJECTS = make_objects()


def setUpModule():
    # The machine running the tests may have fewer cores than the 4
    # workers these tests start on purpose.
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)


def named(data, sample):
    return (sample.name, data)


def as_list(batch):
    return list(batch)


class IterableTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSidecar(OBJECTS)
        self.addCleanup(self.fake.close)

    def dataset(self, **kw):
        kw.setdefault("batch_size", 4)
        return ProvgateIterableDataset(self.fake.contract, url=self.fake.url, transform=named, seed=11,
                                       small_sample=1000, **kw)

    def run_loader(self, ds, workers, epoch=0, start=0):
        ds.set_epoch(epoch, start)
        dl = DataLoader(ds, batch_size=ds.batch_size, num_workers=workers, collate_fn=as_list)
        out = []
        for batch in dl:
            for name, data in batch:
                self.assertEqual(data, OBJECTS[name], name)
                out.append(name)
        return out

    def test_same_order_whatever_the_workers(self):
        ds = self.dataset()
        names = [s.name for s in ds.samples]
        want = [names[i] for i in order.permutation(len(names), 11, 1)]
        for workers in (0, 1, 2, 3, 4):
            with self.subTest(workers=workers):
                self.assertEqual(self.run_loader(ds, workers, epoch=1), want)
        self.assertNotEqual(self.run_loader(ds, 2, epoch=2), want)

    def test_first_worker_announces_the_ranks_order(self):
        ds = self.dataset(rank=1, world_size=2)
        got = self.run_loader(ds, 3, epoch=2)
        self.assertEqual(self.fake.orders, [(2, None, got)])
        self.fake.orders.clear()
        self.run_loader(self.dataset(announce=False), 2, epoch=2)
        self.assertEqual(self.fake.orders, [])

    def test_epoch_header_and_keep_alive(self):
        ds = self.dataset()
        for epoch in (0, 1):
            self.fake.requests.clear()
            self.run_loader(ds, 4, epoch=epoch)
            reads = [r for r in self.fake.requests if r["method"] in ("GET", "POST")]
            self.assertEqual({r["epoch"] for r in reads}, {str(epoch)})
            # one connection per worker, reused for all its reads
            self.assertLessEqual(len({r["peer"] for r in reads}), 4)
            self.assertEqual(sorted(self.fake.served()), sorted(OBJECTS))
            batches = [r for r in reads if r["path"].endswith("/batch")]
            self.assertGreater(len(batches), 0)
            self.assertLess(len(reads), len(OBJECTS), "small samples are read in batches")

    def test_ranks_and_resume(self):
        world = 3
        names = [s.name for s in self.dataset().samples]
        glob = [names[i] for i in order.padded(order.permutation(len(names), 11, 5), world)]
        parts = [self.run_loader(self.dataset(rank=r, world_size=world), 2, epoch=5) for r in range(world)]
        self.assertEqual([parts[p % world][p // world] for p in range(len(glob))], glob)
        # resume at global sample 10: each rank continues where it stopped
        for r in range(world):
            rest = self.run_loader(self.dataset(rank=r, world_size=world), 3, epoch=5, start=10)
            self.assertEqual(rest, [glob[p] for p in range(10, len(glob)) if p % world == r])

    def test_redacted(self):
        self.fake.errors["s/004.bin"] = 451
        with self.assertRaises(Redacted):
            self.run_loader(self.dataset(), 2)
        got = self.run_loader(self.dataset(skip_redacted=True), 2)
        self.assertEqual(sorted(got), sorted(n for n in OBJECTS if n != "s/004.bin"))


class MapStyleTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSidecar(OBJECTS)
        self.addCleanup(self.fake.close)
        self.ds = ProvgateDataset(self.fake.contract, url=self.fake.url, transform=named, small_sample=1000, job="j7")

    def test_len_and_getitem(self):
        self.assertEqual(len(self.ds), len(OBJECTS))
        name, data = self.ds[3]
        self.assertEqual(data, OBJECTS[name])
        got = self.ds[[0, 5, 2]]
        self.assertEqual([n for n, _ in got], [self.ds.samples[i].name for i in (0, 5, 2)])

    def test_loader_order_epochs_and_batches(self):
        for workers in (0, 4):
            sampler = EpochSampler(len(self.ds), seed=3, rank=0, world_size=1)
            for epoch in (0, 1):
                self.fake.requests.clear()
                sampler.set_epoch(epoch)
                self.ds.set_epoch(epoch)
                out = []
                for batch in make_loader(self.ds, sampler, batch_size=8, num_workers=workers, collate_fn=as_list):
                    self.assertLessEqual(len(batch), 8)
                    for name, data in batch:
                        self.assertEqual(data, OBJECTS[name])
                        out.append(name)
                want = [self.ds.samples[i].name for i in order.permutation(len(self.ds), 3, epoch)]
                self.assertEqual(out, want, f"workers {workers} epoch {epoch}")
                reads = [r for r in self.fake.requests if r["method"] in ("GET", "POST")]
                self.assertEqual({(r["epoch"], r["job"]) for r in reads}, {(str(epoch), "j7")})
                self.assertEqual(len([r for r in reads if r["path"].endswith("/batch")]), 5)
                self.ds.end_epoch()
        self.assertEqual(self.fake.epochs_ended, [0, 1, 0, 1])

    def test_loader_announces_each_epochs_order(self):
        sampler = EpochSampler(len(self.ds), seed=3, rank=0, world_size=1)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            self.ds.set_epoch(epoch)
            got = [name for batch in make_loader(self.ds, sampler, batch_size=8, num_workers=2, collate_fn=as_list)
                   for name, _ in batch]
            want = [self.ds.samples[i].name for i in order.permutation(len(self.ds), 3, epoch)]
            self.assertEqual(got, want)
        self.assertEqual(self.fake.orders, [(0, "j7", [self.ds.samples[i].name for i in order.permutation(len(self.ds), 3, 0)]),
                                            (1, "j7", [self.ds.samples[i].name for i in order.permutation(len(self.ds), 3, 1)])])

    def test_loader_reads_when_the_announcement_is_refused(self):
        self.fake.order_status = 413
        sampler = EpochSampler(len(self.ds), seed=3, rank=0, world_size=1)
        with self.assertLogs("provgate_torch", level="WARNING"):
            got = [name for batch in make_loader(self.ds, sampler, batch_size=8, num_workers=2, collate_fn=as_list)
                   for name, _ in batch]
        self.assertEqual(sorted(got), sorted(s.name for s in self.ds.samples))
        self.assertEqual(self.fake.orders, [])

    def test_sampler_resume_and_len(self):
        s = EpochSampler(10, seed=1, rank=1, world_size=2)
        s.set_epoch(2)
        full = list(s)
        self.assertEqual(len(s), 5)
        s.load_state_dict(s.state_dict(consumed=4))
        self.assertEqual(list(s), full[2:])
        self.assertEqual(len(s), 3)
        with self.assertRaises(ValueError):
            s.load_state_dict({"seed": 2, "epoch": 0, "index": 0})

    def test_worker_error_keeps_its_class(self):
        self.fake.errors[self.ds.samples[0].name] = 451
        sampler = EpochSampler(len(self.ds), seed=0, shuffle=False, rank=0, world_size=1)
        with self.assertRaises(Redacted):
            for _ in make_loader(self.ds, sampler, batch_size=4, num_workers=2, collate_fn=as_list):
                pass


if __name__ == "__main__":
    unittest.main()
