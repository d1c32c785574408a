"""provgate_torch: PyTorch datasets over a provgate sidecar.

The sidecar (``provgate serve``) serves a data contract's verified, decoded
samples on localhost and meters every read. This package (``pip install
./python`` from the provgate repository) reads them with the standard
library's http.client (one keep-alive connection per DataLoader worker,
batch responses parsed in place, the worker's next batches read ahead) and
gives PyTorch:

* ``ProvgateDataset`` (map-style) with ``EpochSampler`` and ``make_loader``
  for batch reads of small samples,
* ``ProvgateIterableDataset``, sharded across ranks and workers,
* a deterministic shuffle from (seed, epoch) that is the same whatever the
  number of workers, and resumption from (epoch, sample index),
* exceptions that say what a status means: ``AccessDenied`` (401/403),
  ``NotInManifest`` (404), ``Redacted`` (451), ``VerificationFailed``
  (502), ``OriginUnavailable`` (502 for an unreachable origin, 504),
  ``NotReady`` (503).

The datasets import torch; ``Sidecar`` and the errors do not.
"""

from .client import Sample, Sidecar
from .errors import (
    AccessDenied,
    IntegrityError,
    NotInManifest,
    NotReady,
    OriginUnavailable,
    ProtocolError,
    ProvgateError,
    Redacted,
    SidecarError,
    VerificationFailed,
)

_TORCH_NAMES = ("ProvgateDataset", "ProvgateIterableDataset", "EpochSampler", "make_loader")

__all__ = [
    "AccessDenied",
    "IntegrityError",
    "NotInManifest",
    "NotReady",
    "OriginUnavailable",
    "ProtocolError",
    "ProvgateError",
    "Redacted",
    "Sample",
    "Sidecar",
    "SidecarError",
    "VerificationFailed",
    *_TORCH_NAMES,
]


def __getattr__(name):
    if name in _TORCH_NAMES:
        from . import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
