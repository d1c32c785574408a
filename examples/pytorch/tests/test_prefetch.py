"""Read-ahead in each worker: bounded, in order, errors at their place,
stopped when the consumer stops, and never a sample read that the loader
does not deliver (the sidecar meters every read)."""

import time
import unittest
import warnings

from torch.utils.data import DataLoader

from provgate_torch import EpochSampler, ProvgateDataset, ProvgateIterableDataset, VerificationFailed, make_loader
from provgate_torch import order
from provgate_torch.datasets import _MapPlan, _Prefetcher, _Reader

from .fake_sidecar import FakeSidecar
from .test_datasets import OBJECTS, as_list, named


def setUpModule():
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


class PrefetcherTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSidecar(OBJECTS)
        self.addCleanup(self.fake.close)
        self.ds = ProvgateDataset(self.fake.contract, url=self.fake.url, small_sample=1 << 20)
        self.chunks = [self.ds.samples[i:i + 4] for i in range(0, 20, 4)]  # 5 chunks

    def prefetcher(self, depth=2):
        p = _Prefetcher(self.ds._reader, self.chunks, 3, False, depth)
        self.addCleanup(p.close)
        return p

    def test_reads_ahead_bounded(self):
        p = self.prefetcher(depth=2)
        # Nothing taken yet: depth chunks ready and one more read, waiting.
        self.assertTrue(wait_for(lambda: len(self.fake.batches()) == 3), self.fake.batches())
        time.sleep(0.3)
        self.assertEqual(len(self.fake.batches()), 3, "read-ahead is bounded by depth + 1")
        for chunk in self.chunks:
            self.assertEqual(p.next(), [OBJECTS[s.name] for s in chunk])
        self.assertEqual(self.fake.batches(), [[s.name for s in c] for c in self.chunks], "each chunk once, in order")
        self.assertEqual({r["epoch"] for r in self.fake.requests if r["method"] == "POST"}, {"3"})

    def test_own_connection(self):
        p = self.prefetcher()
        for _ in self.chunks:
            p.next()
        manifest = {r["peer"] for r in self.fake.requests if r["method"] == "GET"}
        batches = {r["peer"] for r in self.fake.requests if r["method"] == "POST"}
        self.assertEqual(len(batches), 1, "one keep-alive connection for every read-ahead")
        self.assertNotEqual(batches, manifest, "the thread does not use the dataset's connection")

    def test_error_at_its_chunk_and_no_read_after_it(self):
        self.fake.errors[self.chunks[2][1].name] = 502
        p = self.prefetcher()
        self.assertEqual(p.next(), [OBJECTS[s.name] for s in self.chunks[0]])
        self.assertEqual(p.next(), [OBJECTS[s.name] for s in self.chunks[1]])
        with self.assertRaises(VerificationFailed):
            p.next()
        time.sleep(0.2)
        self.assertEqual(len(self.fake.batches()), 3, "reading stops at the first error")

    def test_close_stops_reading(self):
        p = self.prefetcher(depth=1)
        p.next()
        p.close()
        time.sleep(0.3)
        self.assertLessEqual(len(self.fake.batches()), 3)


class IterablePrefetchTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSidecar(OBJECTS)
        self.addCleanup(self.fake.close)

    def run_loader(self, prefetch, workers, epoch=2, start=0, stop_after=None):
        ds = ProvgateIterableDataset(self.fake.contract, url=self.fake.url, transform=named, seed=5, batch_size=3,
                                     small_sample=1000, prefetch=prefetch)
        ds.set_epoch(epoch, start)
        out = []
        for batch in DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=as_list):
            for name, data in batch:
                self.assertEqual(data, OBJECTS[name], name)
                out.append(name)
            if stop_after is not None and len(out) >= stop_after:
                break
        return out

    def test_same_order_and_each_sample_read_once(self):
        names = sorted(OBJECTS)
        for workers in (0, 2, 3):
            for start in (0, 7):
                with self.subTest(workers=workers, start=start):
                    want = [names[i] for i in order.permutation(len(names), 5, 2)][start:]
                    self.fake.requests.clear()
                    self.assertEqual(self.run_loader(0, workers, start=start), want)
                    plain = sorted(self.fake.served())
                    self.fake.requests.clear()
                    self.assertEqual(self.run_loader(3, workers, start=start), want)
                    self.assertEqual(sorted(self.fake.served()), plain, "read-ahead reads what is delivered, once")
                    self.assertEqual(sorted(plain), sorted(want))

    def test_early_stop_reads_a_bounded_amount_more(self):
        self.run_loader(2, 0, stop_after=3)
        # the batch delivered, two ready, one in flight
        self.assertTrue(wait_for(lambda: len(self.fake.batches()) <= 4))
        time.sleep(0.3)
        self.assertLessEqual(len(self.fake.batches()), 4)


class MapPrefetchTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSidecar(OBJECTS)
        self.addCleanup(self.fake.close)
        self.ds = ProvgateDataset(self.fake.contract, url=self.fake.url, transform=named, small_sample=1000)

    def test_loader_reads_each_batch_once_ahead(self):
        for workers in (1, 3):
            with self.subTest(workers=workers):
                sampler = EpochSampler(len(self.ds), seed=9, rank=0, world_size=1)
                sampler.set_epoch(1, 5)
                self.ds.set_epoch(1)
                self.fake.requests.clear()
                out = []
                for batch in make_loader(self.ds, sampler, batch_size=4, num_workers=workers, collate_fn=as_list):
                    out.extend(name for name, _ in batch)
                want = [self.ds.samples[i] for i in order.permutation(len(self.ds), 9, 1)[5:]]
                self.assertEqual(out, [s.name for s in want])
                self.assertEqual(sorted(self.fake.served()), sorted(s.name for s in want), "no sample read twice")
                # the workers' own connections stay unused: one per worker
                peers = {r["peer"] for r in self.fake.requests if r["path"].endswith("/batch")}
                self.assertLessEqual(len(peers), workers)

    def test_plan_mismatch_falls_back_without_reading_the_plan(self):
        sampler = EpochSampler(len(self.ds), seed=9, rank=0, world_size=1)
        plan = _MapPlan(self.ds, sampler, 4, False, 2)
        self.addCleanup(plan.close)
        first = plan.batches[0]
        # A request the plan did not foresee: no read-ahead at all.
        self.assertIsNone(plan.take(list(reversed(first))))
        self.assertIsNone(plan.take(first), "the plan is abandoned for good")
        time.sleep(0.2)
        self.assertEqual(self.fake.batches(), [])

    def test_plan_serves_in_order_then_abandons_on_a_surprise(self):
        sampler = EpochSampler(len(self.ds), seed=9, rank=0, world_size=1)
        plan = _MapPlan(self.ds, sampler, 4, False, 1)
        self.addCleanup(plan.close)
        b0, b1, b2 = plan.batches[:3]
        self.assertEqual(plan.take(b0), [OBJECTS[self.ds.samples[i].name] for i in b0])
        self.assertEqual(plan.take(b1), [OBJECTS[self.ds.samples[i].name] for i in b1])
        self.assertIsNone(plan.take(b0))
        time.sleep(0.2)
        # b0, b1, then at most depth (1) ready and one in flight
        self.assertLessEqual(len(self.fake.batches()), 4)
        self.assertEqual(self.fake.batches()[:2], [[self.ds.samples[i].name for i in b] for b in (b0, b1)])


class MapPlanErrorTest(unittest.TestCase):
    def test_after_an_error_the_next_batches_are_read_directly(self):
        with FakeSidecar(OBJECTS) as fake:
            ds = ProvgateDataset(fake.contract, url=fake.url, small_sample=1000)
            sampler = EpochSampler(len(ds), seed=9, rank=0, world_size=1)
            plan = _MapPlan(ds, sampler, 4, False, 2)
            self.addCleanup(plan.close)
            b0, b1, b2 = plan.batches[:3]
            fake.errors[ds.samples[b1[0]].name] = 502
            self.assertEqual(plan.take(b0), [OBJECTS[ds.samples[i].name] for i in b0])
            with self.assertRaises(VerificationFailed):
                plan.take(b1)
            # A DataLoader worker goes on with its next indices: not a
            # confusing error from the stopped read-ahead, a direct read.
            self.assertIsNone(plan.take(b2))
            self.assertEqual(ds[b2], [OBJECTS[ds.samples[i].name] for i in b2])


def view_to_bytes(data, sample):
    if not isinstance(data, memoryview) or not data.readonly:
        raise TypeError(f"zero_copy transform got {type(data).__name__}")
    return sample.name, bytes(data)


class ZeroCopyDatasetTest(unittest.TestCase):
    def test_transform_gets_read_only_views(self):
        with FakeSidecar(OBJECTS) as fake:
            # small_sample 1000: most samples come in batches, the two
            # 3000-byte ones through their own GET; both as views
            ds = ProvgateIterableDataset(fake.contract, url=fake.url, transform=view_to_bytes, seed=1, batch_size=4,
                                         small_sample=1000, zero_copy=True)
            got = []
            for batch in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=as_list):
                got.extend(batch)
            self.assertEqual(sorted(got), sorted(OBJECTS.items()))
            m = ProvgateDataset(fake.contract, url=fake.url, transform=view_to_bytes, small_sample=1000, zero_copy=True)
            self.assertEqual(m[[4, 5, 6]], [(m.samples[i].name, OBJECTS[m.samples[i].name]) for i in (4, 5, 6)])


class ReaderTest(unittest.TestCase):
    def test_clone_has_its_own_connection(self):
        with FakeSidecar(OBJECTS) as fake:
            ds = ProvgateDataset(fake.contract, url=fake.url)
            r = ds._reader.clone()
            self.assertIsInstance(r, _Reader)
            self.assertIsNot(r.client, ds.client)
            r.read(ds.samples[:2], 0)
            ds._reader.read(ds.samples[2:4], 0)
            self.assertEqual(len({x["peer"] for x in fake.requests if x["method"] == "POST"}), 2)
            r.client.close()
            ds.client.close()


if __name__ == "__main__":
    unittest.main()
