"""The TLS client side the benchmarks share: loadgen.py's TLS sessions and
servers.py's encrypting end of a TLS tunnel connect the same way."""

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer


def client_context(kind, cert_path):
    """TLS 1.3 (``kind`` "tls1.3") or TLS 1.2 with the static-RSA suite
    AES256-GCM-SHA384 ("tls1.2"); no tickets and no session cache, so every
    handshake is a full one.  The server's self-signed certificate is the
    trust root: the TLS client checks the key as the KX/1 client checks its
    pinned fingerprint."""
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_METHOD)
    version = SSL.TLS1_3_VERSION if kind == "tls1.3" else SSL.TLS1_2_VERSION
    context.set_min_proto_version(version)
    context.set_max_proto_version(version)
    if kind == "tls1.2":
        context.set_cipher_list(b"AES256-GCM-SHA384")
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.load_verify_locations(cert_path)
    context.set_verify(SSL.VERIFY_PEER, lambda connection, x509, errno, depth, ok: bool(ok))
    return context


@implementer(IOpenSSLClientConnectionCreator)
class ClientCreator:
    """One OpenSSL context for every connection, as ``optionsForClientTLS`` does."""

    def __init__(self, context):
        self.context = context

    def clientConnectionForTLS(self, tls_protocol):
        from OpenSSL import SSL

        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)
        return connection
