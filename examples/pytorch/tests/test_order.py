"""The (seed, epoch) order, rank split and resume points."""

import unittest

from provgate_torch import order


class SplitMix64Test(unittest.TestCase):
    def test_reference_vectors(self):
        # Published SplitMix64 outputs (Vigna's splitmix64.c).
        self.assertEqual(order.SplitMix64(0).next(), 0xE220A8397B1DCDAF)
        self.assertEqual(order.SplitMix64(1234567).next(), 6457827717110365317)

    def test_below_stays_in_bound(self):
        g = order.SplitMix64(7)
        for bound in (1, 2, 3, 10, 1 << 40):
            for _ in range(200):
                self.assertLess(g.below(bound), bound)


class PermutationTest(unittest.TestCase):
    def test_golden(self):
        # Pinned: a change here breaks every saved resume point.
        self.assertEqual(order.permutation(20, 42, 3),
                         [14, 15, 8, 5, 9, 11, 7, 18, 6, 12, 1, 16, 0, 19, 3, 10, 2, 17, 13, 4])

    def test_is_a_permutation(self):
        for n in (0, 1, 2, 17, 1000):
            self.assertEqual(sorted(order.permutation(n, 1, 2)), list(range(n)))

    def test_deterministic_and_epoch_dependent(self):
        a = order.permutation(500, 9, 0)
        self.assertEqual(a, order.permutation(500, 9, 0))
        self.assertNotEqual(a, order.permutation(500, 9, 1))
        self.assertNotEqual(a, order.permutation(500, 10, 0))
        self.assertNotEqual(order.permutation(500, 9, 1), order.permutation(500, 10, 0))

    def test_no_shuffle(self):
        self.assertEqual(order.epoch_order(5, 1, 1, shuffle=False), [0, 1, 2, 3, 4])

    def test_negative_refused(self):
        with self.assertRaises(ValueError):
            order.permutation(3, -1, 0)


class RankTest(unittest.TestCase):
    def test_ranks_interleave_to_global_order(self):
        o = order.permutation(12, 3, 1)
        parts = [order.rank_indices(o, r, 3) for r in range(3)]
        merged = [parts[p % 3][p // 3] for p in range(12)]
        self.assertEqual(merged, o)

    def test_padding_and_drop_last(self):
        o = list(range(10))
        parts = [order.rank_indices(o, r, 4) for r in range(4)]
        self.assertEqual([len(p) for p in parts], [3, 3, 3, 3])
        self.assertEqual(sorted(sum(parts, [])), sorted(o + [0, 1]))  # head repeated
        parts = [order.rank_indices(o, r, 4, drop_last=True) for r in range(4)]
        self.assertEqual(sorted(sum(parts, [])), list(range(8)))

    def test_bad_rank(self):
        with self.assertRaises(ValueError):
            order.rank_indices([1, 2], 2, 2)


class ResumeTest(unittest.TestCase):
    def test_resume_continues_exactly(self):
        o = order.permutation(101, 5, 2)
        for world in (1, 2, 3, 4):
            full = [order.rank_indices(o, r, world) for r in range(world)]
            padded = order.padded(o, world)
            for start in (0, 1, 7, 40, 99, len(padded)):
                got = set()
                for r in range(world):
                    rest = order.rank_indices(o, r, world, start=start)
                    # a suffix of the rank's full list
                    self.assertEqual(rest, full[r][len(full[r]) - len(rest):])
                    got.update((r, i) for i in range(len(full[r]) - len(rest), len(full[r])))
                # exactly the global positions >= start remain
                want = {(p % world, p // world) for p in range(start, len(padded))}
                self.assertEqual(got, want, f"world {world} start {start}")


class WorkerChunksTest(unittest.TestCase):
    def round_robin(self, items, workers, chunk):
        """What a DataLoader yields: one chunk per worker in turn."""
        per = [order.worker_chunks(items, w, workers, chunk) for w in range(workers)]
        out = []
        k = 0
        while any(k < len(p) for p in per):
            for p in per:
                if k < len(p):
                    out.extend(p[k])
            k += 1
        return out

    def test_any_worker_count_gives_the_same_order(self):
        items = order.permutation(53, 1, 1)
        for workers in (1, 2, 3, 4, 7, 60):
            for chunk in (1, 4, 10):
                self.assertEqual(self.round_robin(items, workers, chunk), items, f"{workers} workers, chunk {chunk}")

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            order.worker_chunks([1], 1, 1, 1)
        with self.assertRaises(ValueError):
            order.chunks([1], 0)


if __name__ == "__main__":
    unittest.main()
