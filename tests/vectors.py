"""The KX/1 test vectors, made with an independent implementation.

A copy of ``shared/vectors/kx1-handshake.json`` lives in ``tests/data`` so
that the suite runs from any checkout; ``test_vectors_copy`` checks that the
copy still equals the shared file when that is beside the checkout.
"""

import binascii
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "data", "kx1-handshake.json")
SHARED_PATH = os.path.join(HERE, os.pardir, os.pardir, "shared", "vectors", "kx1-handshake.json")

with open(PATH, encoding="utf-8") as _f:
    RAW = json.load(_f)


def hexbytes(name):
    return binascii.unhexlify(RAW[name])


def record(name):
    return binascii.unhexlify(RAW["records"][name])
