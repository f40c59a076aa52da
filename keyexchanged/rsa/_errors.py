"""The two exceptions of keyexchanged.rsa."""

from __future__ import annotations

# One message for every OAEP failure, so the message cannot become an oracle.
DECRYPTION_FAILED = "decryption failed"


class DecryptionError(Exception):
    """Raised for every OAEP decryption failure, always with the same text."""

    def __init__(self, *_ignored) -> None:
        # Whatever a caller (or unpickling) passes, the text stays the same.
        super().__init__(DECRYPTION_FAILED)


class FaultError(RuntimeError):
    """A private-key computation failed its self-check; nothing was output.

    Seeing this means the hardware (or something tampering with it)
    miscalculated; the signature that would have leaked a factor of n was
    discarded.
    """
