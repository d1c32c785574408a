"""Exceptions for what the sidecar answers.

Every HTTP error from the sidecar becomes a ``SidecarError`` subclass that
says what it means for a training job:

=====  ======================  ==============================================
401/3  ``AccessDenied``         no or bad token, wrong contract, quota spent
404    ``NotInManifest``        the name is not in the verified manifest
451    ``Redacted``             the sample was redacted from the dataset
502    ``VerificationFailed``   the origin's bytes failed verification
502/4  ``OriginUnavailable``    the origin could not be read (code not
                                ``verification_failed``), or timed out
503    ``NotReady``             contract not verified yet, token expired, or
                                the sidecar is busy (retried for a while
                                first, see Sidecar.retry_unavailable)
=====  ======================  ==============================================
"""

import json


class ProvgateError(Exception):
    """Base of every error this package raises."""


class ProtocolError(ProvgateError):
    """The sidecar's answer was malformed or truncated."""


class IntegrityError(ProvgateError):
    """Bytes received did not match the manifest's sha256 or size."""

    def __init__(self, name, want=None, got=None):
        # One argument: a message, as when a DataLoader worker's error is
        # raised again in the main process.
        super().__init__(name if want is None else f"{name}: got {got}, manifest says {want}")
        self.name = name
        self.want = want
        self.got = got


class SidecarError(ProvgateError):
    """An error status from the sidecar, with its JSON error code.

    A DataLoader re-raises a worker's exception in the main process as
    cls(message); that one-argument form keeps the class, and so the
    meaning, with the class's default status."""

    status = 0

    def __init__(self, status, code=None, message=None, name=None):
        if code is None and message is None and isinstance(status, str):
            super().__init__(status)
            self.code, self.message, self.name = "", status, None
            return
        what = f"{name}: " if name else ""
        super().__init__(f"{what}{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.name = name


class AccessDenied(SidecarError):
    """401/403: no or bad token, another contract, or the quota is spent."""

    status = 403


class NotInManifest(SidecarError):
    """404: the name is not in the contract's verified manifest."""

    status = 404


class Redacted(SidecarError):
    """451: the sample was redacted; it must not be used."""

    status = 451


class VerificationFailed(SidecarError):
    """502: the origin's bytes failed verification upstream."""

    status = 502


class OriginUnavailable(SidecarError):
    """502/504: the origin could not be read in time; nothing was served."""

    status = 502


class NotReady(SidecarError):
    """503: the contract is not verified yet, or its token expired."""

    status = 503


_BY_STATUS = {
    401: AccessDenied,
    403: AccessDenied,
    404: NotInManifest,
    451: Redacted,
    502: VerificationFailed,
    503: NotReady,
}


def error_for(status, body, name=None):
    """The exception for an error status and its (JSON) body."""
    code, message = "", ""
    try:
        detail = json.loads(body.decode("utf-8"))["error"]
        code = str(detail.get("code", ""))
        message = str(detail.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        message = body[:200].decode("utf-8", "replace").strip()
    cls = _BY_STATUS.get(status, SidecarError)
    if (status == 502 and code and code != "verification_failed") or status == 504:
        cls = OriginUnavailable
    return cls(status, code or "http_%d" % status, message or "(no message)", name)
