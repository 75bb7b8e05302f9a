"""A stand-in for real CPU-bound work (rendering, parsing, number crunching)."""

import hashlib

ROUNDS = 800_000  # about 0.3 s of pure Python on a current machine


def compute_report(rounds: int = ROUNDS) -> dict[str, object]:
    """Chain ``rounds`` SHA-256 hashes and return the final digest.

    No I/O at all, so ``await`` cannot help: whichever thread runs this is busy until it returns.
    The result is deterministic, which lets tests check that moving it off the loop changed
    nothing but where it runs.
    """
    digest = b""
    for i in range(rounds):
        digest = hashlib.sha256(digest + i.to_bytes(4, "little")).digest()
    return {"rounds": rounds, "digest": digest.hex()}
