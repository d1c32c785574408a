"""The example scripts against the loopback fake: the training loop runs,
meters each epoch and resumes mid-epoch without reading a sample twice; the
benchmark reads every byte on both sides."""

import contextlib
import io
import json
import os
import tempfile
import unittest
import warnings

import bench_loader
import train_example

from .fake_sidecar import FakeSidecar
from .test_datasets import OBJECTS


def setUpModule():
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)


class TrainExampleTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSidecar(OBJECTS)
        self.addCleanup(self.fake.close)
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def train(self, *extra):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = train_example.main(["--sidecar", self.fake.url, "--contract", self.fake.contract,
                                       "--workers", "2", "--batch-size", "8", *extra])
        self.assertEqual(code, 0, out.getvalue())
        return out.getvalue()

    def test_two_epochs(self):
        out = self.train("--epochs", "2")
        self.assertIn("epoch 0: 37 samples", out)
        self.assertIn("epoch 1: 37 samples", out)
        self.assertEqual(self.fake.epochs_ended, [0, 1])
        self.assertEqual(len(self.fake.served()), 2 * len(OBJECTS))

    def test_resume_mid_epoch(self):
        resume = os.path.join(self.dir.name, "resume.json")
        with open(resume, "w") as f:
            json.dump({"seed": 0, "epoch": 1, "index": 16}, f)
        out = self.train("--epochs", "2", "--resume", resume)
        self.assertIn("resuming at epoch 1, sample 16", out)
        self.assertIn("epoch 1: 21 samples", out)
        self.assertEqual(len(self.fake.served()), len(OBJECTS) - 16)
        with open(resume) as f:
            self.assertEqual(json.load(f), {"seed": 0, "epoch": 2, "index": 0})


class BenchLoaderTest(unittest.TestCase):
    def test_reads_every_byte(self):
        for extra in ([], ["--prefetch", "0"], ["--zero-copy"]):
            with self.subTest(extra=extra), FakeSidecar(OBJECTS) as fake, tempfile.TemporaryDirectory() as d:
                for name, data in OBJECTS.items():
                    os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
                    with open(os.path.join(d, name), "wb") as f:
                        f.write(data)
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    code = bench_loader.main(["--sidecar", fake.url, "--contract", fake.contract, "--dir", d,
                                              "--workers", "2", "--batch-size", "8", "--epochs", "1", "--json",
                                              *extra])
                self.assertEqual(code, 0)
                res = json.loads(out.getvalue())
                self.assertEqual(res["samples"], len(OBJECTS))
                self.assertGreater(res["ratio"], 0)
                self.assertEqual(len(fake.served()), 2 * len(OBJECTS))


if __name__ == "__main__":
    unittest.main()
