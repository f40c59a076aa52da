"""The lab: the original exercise's attacks, run live, and refused by KX/1.

``keyexchange lab NAME`` starts, on 127.0.0.1, a server and a client of the
classroom exercise keyexchanged grew out of (server sends its RSA key,
client sends a session key under it, then AES), runs a real attack against
them and prints what the attacker recovered; then it runs the same attack
against the daemon's own KX/1 server and shows the precise refusal.
``docs/lab.rst`` walks through every lesson.

The weak scheme (:mod:`keyexchanged.lab.weak`) is DELIBERATELY INSECURE,
for teaching.  Nothing outside this package imports it, and the package is
not an application plugin: ``twistd keyexchange`` can never serve it.

One module per lesson, each with ``NAME``, ``TITLE``, ``SUMMARY`` and two
functions, ``against_weak(lab)`` and ``against_kx1(lab)``, that return an
:class:`~keyexchanged.lab.runner.Outcome`.
"""

import importlib
from typing import NamedTuple

__all__ = ["LESSONS", "UnknownLesson", "load", "main"]


class Lesson(NamedTuple):
    name: str
    module: str
    summary: str


#: In the order a student should take them.
LESSONS = (
    Lesson(
        "textbook-rsa",
        "textbook_rsa",
        "no padding and e = 3: the session key from the ciphertext alone, and a "
        "ciphertext the server decrypts to 2 x the key",
    ),
    Lesson(
        "padding-oracle",
        "padding_oracle",
        "a server that says 'bad padding': Bleichenbacher's attack decrypts a recorded key",
    ),
    Lesson(
        "mitm",
        "mitm",
        "nobody checks the server's key: a man in the middle swaps it and reads everything",
    ),
    Lesson(
        "replay",
        "replay",
        "nothing fresh in the key exchange: a recorded session, replayed, pays twice",
    ),
    Lesson(
        "unauthenticated-aes",
        "unauthenticated_aes",
        "AES-CTR without a tag or an end: PAY 100 becomes PAY 900, a CANCEL vanishes",
    ),
    Lesson(
        "forward-secrecy",
        "forward_secrecy",
        "the server's key stolen later decrypts every recorded session",
    ),
    Lesson(
        "post-quantum",
        "post_quantum",
        "store now, decrypt later: a recording opens once its ephemeral RSA key is factored",
    ),
)

_BY_NAME = {lesson.name: lesson for lesson in LESSONS}


class UnknownLesson(ValueError):
    """A lesson name that is not in :data:`LESSONS`, or a bad combination."""


def load(name):
    """The module of lesson ``name``."""
    try:
        lesson = _BY_NAME[name]
    except KeyError:
        raise UnknownLesson(f"no lesson {name!r}; the lessons are: {', '.join(_BY_NAME)}") from None
    return importlib.import_module(f"{__name__}.{lesson.module}")


def list_lessons(out):
    width = max(len(name) for name in _BY_NAME)
    print("Lessons (keyexchange lab NAME, or --all):", file=out)
    for number, lesson in enumerate(LESSONS, 1):
        print(f"  {number}. {lesson.name.ljust(width)}  {lesson.summary}", file=out)


def main(names, list_only=False, run_all=False, seed=None, out=None):
    """``keyexchange lab``: returns the exit status (0 when every attack
    worked against the weak scheme and failed against KX/1)."""
    import sys

    out = out if out is not None else sys.stdout
    if names and run_all:
        raise UnknownLesson("name lessons or give --all, not both")
    if list_only or not (names or run_all):
        list_lessons(out)
        if not list_only:
            print("\nRun one with: keyexchange lab NAME   (or all with --all)", file=out)
        return 0
    lessons = [load(lesson.name) for lesson in LESSONS] if run_all else [load(n) for n in names]

    from keyexchanged.lab import runner

    with runner.Lab(out=out, seed=seed) as lab:
        lab.print(
            f"keyexchange lab: seed {lab.seed} (--seed {lab.seed} repeats the weak halves); "
            "everything runs on 127.0.0.1"
        )
        with runner.reactor_thread():
            results = runner.run_lessons(lessons, lab)
        lab.heading("summary")
        unexpected = 0
        for name, weak, kx1 in results:
            if weak.pending:
                weak_state = weak.pending
            else:
                weak_state = "broken" if weak.worked else "NOT broken (unexpected)"
            if kx1.pending:
                kx1_state = kx1.pending
            else:
                kx1_state = "BROKEN (unexpected)" if kx1.worked else "refused"
            unexpected += (not weak.worked and not weak.pending) + (kx1.worked and not kx1.pending)
            lab.print(f"  {name.ljust(20)} weak: {weak_state}; KX/1: {kx1_state}")
    return 0 if unexpected == 0 else 1
