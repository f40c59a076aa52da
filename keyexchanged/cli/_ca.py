"""``keyexchange ca init`` and ``ca issue``: the operator's small CA."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from keyexchanged import keys, rsa
from keyexchanged.cli._common import (
    DEFAULT_BITS,
    CommandError,
    Spinner,
    UsageError,
    add_bits,
    add_command,
    add_days,
    add_force,
    add_passphrase_file,
    passphrase,
    print_fields,
    usage_errors,
)
from keyexchanged.errors import EXIT_OK


def add_ca(subparsers) -> None:
    from keyexchanged import ca

    parser = subparsers.add_parser(
        "ca",
        help="a small certificate authority for your servers' keys",
        description=(
            "An operator CA: 'init' makes one, 'issue' signs a certificate for a server "
            "key. Give clients the CA certificate (DIR/ca.pem) and they can connect with "
            "--ca instead of a fingerprint per server."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    init = add_command(
        actions,
        "init",
        cmd_ca_init,
        help="create a CA: DIR/ca.key (0600) and the self-signed DIR/ca.pem",
        description="Create a CA in DIR (made 0700 if missing): a new RSA key, DIR/ca.key "
        "(mode 0600), and its self-signed certificate DIR/ca.pem, which clients use with "
        "--ca. An existing CA is never replaced.",
    )
    init.add_argument("directory", metavar="DIR", help="where the CA lives")
    init.add_argument(
        "--name",
        default="keyexchange operator CA",
        help="the CA's name (subject CN) (default: %(default)s)",
    )
    add_bits(init, help=f"size of the CA key (default: {DEFAULT_BITS})")
    add_days(
        init,
        default=ca.CA_DAYS,
        help="validity of the CA certificate in days (default: %(default)s)",
    )
    add_passphrase_file(init, help="encrypt DIR/ca.key with the first line of F")

    issue = add_command(
        actions,
        "issue",
        cmd_ca_issue,
        help="sign a server certificate for a public key",
        description="Sign, with the CA in DIR, a certificate for the server key FILE.pub "
        "valid for the given host names and IP addresses, to serve with the daemon's "
        "--certificate. Its keyUsage allows keyEncipherment only.",
    )
    issue.add_argument("directory", metavar="DIR", help="the CA made by 'ca init'")
    issue.add_argument(
        "--key", required=True, metavar="FILE", help="the server's public key (server.key.pub)"
    )
    for flag, metavar, what in (
        ("--name", "HOST", "a host name"),
        ("--ip", "ADDR", "an IP address"),
    ):
        issue.add_argument(
            flag,
            action="append",
            default=[],
            metavar=metavar,
            help=f"{what} clients dial (repeat for more)",
        )
    add_days(
        issue,
        default=ca.SERVER_DAYS,
        help="validity in days (default: %(default)s; never beyond the CA's own)",
    )
    issue.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the certificate (default: the key file's name with "
        ".crt for .key.pub, e.g. server.crt)",
    )
    add_force(issue, help="overwrite --out if it exists")
    add_passphrase_file(issue, help="passphrase (first line of F) of DIR/ca.key")


def cmd_ca_init(args: argparse.Namespace) -> int:
    """Create the CA key and self-signed certificate in ``args.directory``."""
    from keyexchanged import ca

    secret = passphrase(args)
    directory = args.directory
    for name in (ca.CA_KEY, ca.CA_CERTIFICATE):
        if os.path.lexists(os.path.join(directory, name)):
            raise CommandError(
                f"{os.path.join(directory, name)}: already exists; not replacing a CA"
            )
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"{directory}: cannot create: {exc.strerror or exc}") from None

    with Spinner(sys.stderr, f"Generating the CA's RSA key of {args.bits} bits...") as spinner:
        key = rsa.generate_private_key(args.bits, progress=spinner.tick)
    certificate = ca.init_ca(directory, key, name=args.name, days=args.days, passphrase=secret)
    print_fields(
        ("CA key", f"{os.path.join(directory, ca.CA_KEY)} (keep it private)"),
        ("CA certificate", os.path.join(directory, ca.CA_CERTIFICATE)),
        ("Valid until", f"{ca.not_valid_after(certificate):%Y-%m-%d} UTC"),
        ("Clients use", f"--ca {os.path.join(directory, ca.CA_CERTIFICATE)}"),
    )
    return EXIT_OK


def _default_certificate_path(key_path: str) -> str:
    base = key_path
    for suffix in (".pub", ".key"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base + ".crt"


def cmd_ca_issue(args: argparse.Namespace) -> int:
    """Sign a server certificate for the key in ``args.key``."""
    from keyexchanged import ca, handshake
    from keyexchanged.framing import ProtocolError

    if not args.name and not args.ip:
        raise UsageError("give at least one --name HOST or --ip ADDR that clients dial")
    for address in args.ip:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise UsageError(f"--ip {address!r} is not an IP address") from None
    for name in args.name:
        with usage_errors("--name: "):
            ca.check_host_name(name)
    out_path = args.out or _default_certificate_path(args.key)
    if not args.force and os.path.lexists(out_path):
        raise CommandError(f"{out_path}: already exists (use --force to overwrite)")
    public_key = keys.load_public_key(args.key)
    try:
        handshake.check_public_key(public_key, "weak-key")
    except ProtocolError as exc:
        raise CommandError(f"{args.key}: clients would refuse this key: {exc.detail}") from None
    certificate = ca.issue_certificate(
        args.directory,
        public_key,
        names=args.name,
        addresses=args.ip,
        days=args.days,
        passphrase=passphrase(args),
    )
    ca.save_certificate(certificate, out_path, force=args.force)
    print_fields(
        ("Certificate", out_path),
        ("For", ca.describe_names(certificate)),
        ("Key", keys.fingerprint(public_key)),
        ("Valid until", f"{ca.not_valid_after(certificate):%Y-%m-%d} UTC"),
        ("Serve it", f"twistd keyexchange --certificate {out_path} ..."),
    )
    return EXIT_OK
