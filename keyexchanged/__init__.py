"""keyexchanged: the KX/1 key-exchange daemon and its client, on Twisted.

A map of the package, by job:

Protocol and crypto
    ``rsa/``            our RSA: key generation, OAEP, PSS, blinding (stdlib, gmpy2 optional)
    ``keys.py``         key files (PEM/DER, PKCS#1/#8, SPKI) and fingerprints
    ``framing.py``      KX/1 frames and their limits
    ``records.py``      AES-256-GCM records and key update
    ``schedule.py``     the key schedule (HKDF) and the byte strings that are signed
    ``handshake/``      the KX/1 state machines, free of I/O
    ``protocol/``       the Twisted adapter: the secure channel and its factories
    ``ephemeral.py``    forward secrecy: the server's ephemeral keys
    ``tickets.py``      resumption: tickets, ticket keys, the client's store
    ``trust.py``        whose key to trust: pinned, CA, authorized keys
    ``knownhosts.py``   trust on first use
    ``ca.py``           X.509: the operator CA and the server's chain
    ``errors.py``       every error a user can fix, under one root
    ``files.py``        bounded reads and atomic writes

Server operations
    ``tap.py``          ``twistd keyexchange``: options, and the service built from them
    ``config.py``       the settings table, the config file and its validators
    ``service.py``      the running daemon: listening, signals, reload
    ``processes/``      ``--processes N``: a parent and the children that serve
    ``admission.py``    connection, per-source and handshake limits
    ``workers.py``      private-key work in worker processes
    ``allocator.py``    glibc malloc tuned for many idle sessions
    ``startup.py``      a process's start without the cycle collector, then frozen
    ``proxyproto.py``   the PROXY protocol behind a load balancer
    ``metrics.py``      Prometheus metrics
    ``logs.py``         JSON log lines, the session-end event, limit warnings
    ``systemd.py``      sd_notify and reload on SIGHUP
    ``interfaces.py``   ``IApplication``: what an application plugin provides
    ``applications.py`` the applications served in a session, and plugin discovery
    ``plugins/``        the built-in applications: message, echo, forward
    ``relay.py``        splicing two connections (forward, tunnels)

Client
    ``cli/``            the ``keyexchange`` command
    ``client.py``       ``keyexchange connect``
    ``tunnel.py``       ``keyexchange tunnel``: the client half of a tunnel

Teaching
    ``lab/``            ``keyexchange lab``: the original exercise, attacked (never served)
    ``demo.py``         ``make demo``: a daemon and a client, end to end

Outside the package: ``twisted/plugins/`` (the twistd plugin, one line),
``docs/spec/`` (the KX/1 specification and its vectors) and ``tests/``.
"""
