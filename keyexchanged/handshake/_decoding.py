"""Strict decoders for what a peer sends, and the ERROR payload both ways.

One spelling per value: canonical base64 only, JSON objects without
duplicate members, integers that are not booleans.  Two parsers that could
read the same bytes differently would be a gap for an attacker; these
refuse the ambiguity instead.  Every refusal is a
:class:`~keyexchanged.framing.ProtocolError` with public text.
"""

import base64
import json

from keyexchanged.framing import ERROR_CODES, MALFORMED_FRAME, MAX_PAYLOAD, ProtocolError

#: What a client accepts as a server key (§2).  Below 2048 bits RSA is
#: within reach; above 8192 a single operation is slow enough to be a
#: denial of service.
MIN_KEY_BITS = 2048
MAX_KEY_BITS = 8192
#: e = 3 and friends invite small-exponent attacks on bad padding; a huge e
#: makes every public operation slow.
MIN_EXPONENT_EXCLUSIVE = 2**16
MAX_EXPONENT_EXCLUSIVE = 2**256

#: ERROR details are short public text.
_DETAIL_MAX = 200


def _b64decode(text, what, code=MALFORMED_FRAME):
    """Strict, canonical RFC 4648 base64: one spelling per byte string."""
    if not isinstance(text, str):
        raise ProtocolError(code, f"{what} is not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise ProtocolError(code, f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ProtocolError(code, f"{what} is not canonical base64")
    return raw


def _no_duplicates(pairs):
    obj = {}
    for name, value in pairs:
        if name in obj:
            # Two parsers could pick different copies; refuse the ambiguity.
            raise ValueError("duplicate member")
        obj[name] = value
    return obj


def _json_object(payload, code, what):
    try:
        obj = json.loads(bytes(payload).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        # RecursionError: 64 KiB of "[" nests deeper than the parser's stack.
        raise ProtocolError(code, f"{what} is not a JSON object") from None
    if not isinstance(obj, dict):
        raise ProtocolError(code, f"{what} is not a JSON object")
    return obj


def _integer(value):
    """A JSON integer: ``true`` is an int to Python, not to the protocol."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_public_key(public_key, code, max_bits=MAX_KEY_BITS, exponent=None):
    """Refuse keys outside the protocol's sizes and exponents."""
    bits = public_key.n.bit_length()
    if not MIN_KEY_BITS <= bits <= max_bits:
        raise ProtocolError(code, f"RSA modulus of {bits} bits")
    e = public_key.e
    if exponent is not None:
        if e != exponent:
            raise ProtocolError(code, f"RSA public exponent is not {exponent}")
    elif e % 2 == 0 or not MIN_EXPONENT_EXCLUSIVE < e < MAX_EXPONENT_EXCLUSIVE:
        raise ProtocolError(code, "RSA public exponent out of range")


def _printable(text):
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text[:_DETAIL_MAX]


def error_payload(code, detail):
    """The ERROR payload: fits its frame by construction, whatever ``detail``
    holds (JSON escapes a non-ASCII character into up to 12 bytes)."""
    detail = _printable(detail)
    while True:
        payload = json.dumps({"error": code, "detail": detail}).encode("ascii")
        if len(payload) <= MAX_PAYLOAD["ERROR"]:
            return payload
        detail = detail[: len(detail) // 2]


def parse_error_payload(payload):
    """Read a peer's ERROR leniently: it ends the connection whatever it says,
    and nothing in it may raise."""
    try:
        obj = _json_object(payload, MALFORMED_FRAME, "ERROR")
    except ProtocolError:
        return "malformed-frame", "unreadable ERROR frame"
    code = obj.get("error")
    if not isinstance(code, str) or code not in ERROR_CODES:
        code = "unknown"
    detail = obj.get("detail", "")
    if not isinstance(detail, str):
        detail = "(detail is not a string)"
    return code, _printable(detail)
