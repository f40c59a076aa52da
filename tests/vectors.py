"""The KX/1 test vectors, made with an independent implementation.

They live beside the specification, in ``docs/spec/vectors/``, so that a
clone of the repository is complete: ``kx1-handshake.json`` (§2–§8),
``kx1-ephemeral-resume.json`` (revision 2: §10 and §11) and
``kx1-revision3.json`` (revision 3: §12 and §13).  The first two are copies
of the shared files but for their descriptions (which here cite the spec)
and the handshake file's ``server_message_after_update``;
``tests/test_vectors.py`` checks that when ``shared/`` is checked out
beside the repository.  The third is the independent implementation's
own (``tests/independent/revision3_vectors.py``).
"""

import binascii
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DIRECTORY = os.path.join(HERE, os.pardir, "docs", "spec", "vectors")
SHARED_DIRECTORY = os.path.join(HERE, os.pardir, os.pardir, "shared", "vectors")

HANDSHAKE_FILE = "kx1-handshake.json"
RESUME_FILE = "kx1-ephemeral-resume.json"
REVISION3_FILE = "kx1-revision3.json"
FILES = (HANDSHAKE_FILE, RESUME_FILE)
#: What the repository's copies add to, or say otherwise than, the shared files.
LOCAL_MEMBERS = ("description", "server_message_after_update")

PATH = os.path.join(DIRECTORY, HANDSHAKE_FILE)
RESUME_PATH = os.path.join(DIRECTORY, RESUME_FILE)
REVISION3_PATH = os.path.join(DIRECTORY, REVISION3_FILE)


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


#: The handshake of §2–§8.
RAW = _load(PATH)
#: Revision 2: the ephemeral key (§10), a full handshake that issues a
#: ticket, and the session resumed from it (§11).
RESUME_RAW = _load(RESUME_PATH)
#: Revision 3: the hybrid key exchange (§12) and both record ciphers (§13).
REVISION3_RAW = _load(REVISION3_PATH)


def hexbytes(name):
    """A top-level byte string of the handshake file."""
    return binascii.unhexlify(RAW[name])


def record(name):
    """A sealed record of the handshake file."""
    return binascii.unhexlify(RAW["records"][name])


def resume_hexbytes(*path):
    """A byte string of the revision 2 file, by its path of member names:
    ``resume_hexbytes("full", "nonce")``."""
    value = RESUME_RAW
    for name in path:
        value = value[name]
    return binascii.unhexlify(value)


def resume_record(part, name):
    """A sealed record of the revision 2 file: ``part`` is ``"full"`` or
    ``"resumed"``."""
    return resume_hexbytes(part, "records", name)


def revision3_hexbytes(*path):
    """A byte string of the revision-3 file, by its path of member names:
    ``revision3_hexbytes("sessions", "aes-256-ocb", "full", "nonce")``."""
    value = REVISION3_RAW
    for name in path:
        value = value[name]
    return binascii.unhexlify(value)
