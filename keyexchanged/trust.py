"""Deciding whether to trust a server's key (PROTOCOL.md §7), client side.

A trust policy has one method, ``verify(server_name, offer)``, where
``offer`` is the :class:`~keyexchanged.handshake.ServerKeyReceived` event.
It returns (or fires with) anything to accept the key and raises
:class:`UntrustedKey` to refuse it; refusing sends ``ERROR untrusted-key``
before KEY, so no secret is ever encrypted to a key we do not trust.
"""

import hmac
import re

__all__ = ["Insecure", "NoTrustAnchor", "PinnedKey", "UntrustedKey", "check_fingerprint_syntax"]

# SHA256: and 43 characters of unpadded base64 (32 bytes).
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]")


class UntrustedKey(Exception):
    """The server's key failed a trust check; the message says which."""


def check_fingerprint_syntax(text):
    """Return ``text`` if it is a well-formed fingerprint, else raise ValueError."""
    if not _FINGERPRINT.fullmatch(text):
        raise ValueError(f"{text!r} is not a key fingerprint (SHA256: and 43 base64 characters)")
    return text


class PinnedKey:
    """Trust exactly one key, named by its fingerprint."""

    def __init__(self, fingerprint):
        self.fingerprint = check_fingerprint_syntax(fingerprint)

    def verify(self, server_name, offer):
        if not hmac.compare_digest(offer.fingerprint.encode(), self.fingerprint.encode()):
            raise UntrustedKey(
                f"the server's key {offer.fingerprint} does not match the pinned "
                f"fingerprint {self.fingerprint}"
            )


class Insecure:
    """Trust any key.  Only by an explicit choice, and never silently."""

    def __init__(self, warn):
        self.warn = warn

    def verify(self, server_name, offer):
        self.warn(
            f"WARNING: not verifying the server's key ({offer.fingerprint}); anyone "
            "on the path can read this session"
        )


class NoTrustAnchor:
    """No way to check the key was given: refuse, and say how to pin it."""

    def verify(self, server_name, offer):
        raise UntrustedKey(
            f"no way to check the server's key {offer.fingerprint}; if it is right, "
            f"run again with --fingerprint {offer.fingerprint}"
        )
