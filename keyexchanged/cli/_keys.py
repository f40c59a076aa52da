"""``keyexchange keygen``, ``fingerprint`` and ``ticket-keys``: key files."""

from __future__ import annotations

import argparse
import os
import sys

from keyexchanged import keys, rsa
from keyexchanged.cli._common import (
    DEFAULT_BITS,
    DEFAULT_KEY_FILE,
    CommandError,
    Spinner,
    add_bits,
    add_command,
    add_force,
    add_passphrase_file,
    passphrase,
    print_fields,
)
from keyexchanged.errors import EXIT_OK

# --- keygen ------------------------------------------------------------------


def add_keygen(subparsers) -> None:
    parser = add_command(
        subparsers,
        "keygen",
        cmd_keygen,
        help="generate an RSA key pair",
        description=(
            "Generate an RSA key pair: FILE gets the private key (PKCS#8 PEM, mode 0600, "
            "encrypted if a passphrase file is given) and FILE.pub the public key "
            "(SubjectPublicKeyInfo PEM). Prints the fingerprint and the files written."
        ),
    )
    add_bits(
        parser,
        help=f"modulus size: a multiple of {rsa.GENERATE_BITS_STEP} from "
        f"{rsa.MIN_GENERATE_BITS} to {rsa.MAX_GENERATE_BITS} (default: {DEFAULT_BITS})",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_KEY_FILE,
        metavar="FILE",
        help=f"private key file; the public key goes to FILE.pub "
        f"(default: {DEFAULT_KEY_FILE} in the current directory)",
    )
    add_passphrase_file(parser, help="encrypt the private key with the first line of F")
    add_force(parser, help="overwrite FILE and FILE.pub if they exist")


def cmd_keygen(args: argparse.Namespace) -> int:
    """Generate a key pair into ``args.out`` and ``args.out + ".pub"``."""
    bits = args.bits
    private_path = args.out
    public_path = private_path + ".pub"
    secret = passphrase(args)

    # Everything that can be checked is checked before the slow part.
    for path in (private_path, public_path):
        if os.path.isdir(path):  # even --force would fail there, half-way through
            raise CommandError(f"{path}: is a directory")
        if not args.force and os.path.lexists(path):
            raise CommandError(f"{path}: already exists (use --force to overwrite)")
    directory = os.path.dirname(private_path) or os.curdir
    if not os.path.isdir(directory):
        raise CommandError(f"{directory}: no such directory")
    if not os.access(directory, os.W_OK):
        raise CommandError(f"{directory}: directory is not writable")

    with Spinner(sys.stderr, f"Generating an RSA key of {bits} bits...") as spinner:
        key = keys.create_key_pair(
            private_path, bits, passphrase=secret, force=args.force, progress=spinner.tick
        )
    print_fields(
        ("Fingerprint", keys.fingerprint(key)),
        ("Private key", private_path),
        ("Public key", public_path),
    )
    return EXIT_OK


# --- fingerprint ---------------------------------------------------------------


def add_fingerprint(subparsers) -> None:
    parser = add_command(
        subparsers,
        "fingerprint",
        cmd_fingerprint,
        help="print the fingerprint of a key file",
        description=(
            "Print the SHA-256 fingerprint (SHA256:base64) of a public or private key file, "
            "PEM or DER, as peers show it."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="public or private key file")
    add_passphrase_file(parser, help="passphrase (first line of F) of an encrypted private key")


def cmd_fingerprint(args: argparse.Namespace) -> int:
    """Print the fingerprint of the key in ``args.file``."""
    public_key = keys.load_public_key(args.file, passphrase=passphrase(args))
    print(keys.fingerprint(public_key), file=sys.stdout)
    return EXIT_OK


# --- rotate-key -------------------------------------------------------------------


def add_rotate_key(subparsers) -> None:
    parser = add_command(
        subparsers,
        "rotate-key",
        cmd_rotate_key,
        help="make the server's next key its key (the switch of a key rotation)",
        description=(
            "The switch of a key rotation (docs/deployment.rst): NEXT becomes KEY, the "
            "old KEY is kept as KEY.retired (to roll back), and the .pub files follow. "
            "KEY names a key at every moment. Refused, with nothing changed, when NEXT "
            "is KEY's key, weaker than 2048 bits, or either file is unreadable or "
            "readable by others. Then remove next-private-key from the daemon's "
            "config and reload it (SIGHUP)."
        ),
    )
    parser.add_argument("key", metavar="KEY", help="the daemon's private-key file")
    parser.add_argument("next", metavar="NEXT", help="its next-private-key file")


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from keyexchanged import rotation

    switched = rotation.switch_keys(args.key, args.next)
    print_fields(
        ("Key", f"{args.key}: {switched.current} (was the next key)"),
        ("Retired", f"{switched.retired_path}: {switched.retired}"),
    )
    print(
        "Now remove next-private-key from the daemon's config and reload it "
        "(systemctl reload keyexchanged, or SIGHUP).",
        file=sys.stdout,
    )
    return EXIT_OK


# --- ticket-keys -----------------------------------------------------------------


def add_ticket_keys(subparsers) -> None:
    parser = add_command(
        subparsers,
        "ticket-keys",
        cmd_ticket_keys,
        help="make or rotate a ticket-key file shared by several daemons",
        description=(
            "Daemons behind one address share resumption ticket keys through a file "
            "(twistd keyexchange --ticket-keys FILE): one base64 32-byte key per line, "
            "the first encrypts, every one decrypts; mode 0600. 'new' makes one with a "
            "fresh key; 'rotate' puts a fresh key first and keeps the previous first key "
            "after it (older ones are dropped). The daemons read the file again within "
            "30 seconds of a change."
        ),
    )
    parser.add_argument("action", choices=("new", "rotate"), help="what to do")
    parser.add_argument("file", metavar="FILE", help="the ticket-key file")


def cmd_ticket_keys(args: argparse.Namespace) -> int:
    from keyexchanged import tickets

    if args.action == "new":
        directory = os.path.dirname(os.path.abspath(args.file))
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, mode=0o700)
            except OSError as error:
                raise CommandError(
                    f"{directory}: cannot create the directory: {error.strerror}"
                ) from None
            print(f"{directory}: created (mode 0700)")
        tickets.new_ticket_key_file(args.file)
        print(f"{args.file}: one fresh ticket key (mode 0600)")
    else:
        tickets.rotate_ticket_key_file(args.file)
        print(f"{args.file}: a fresh key first, the previous one kept to decrypt")
    return EXIT_OK
