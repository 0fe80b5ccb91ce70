"""Can a caller learn anything about a key's secret from how long a refusal takes?

    .venv/bin/python -m benchmarks.bench_timing [--samples 4000]

In process, four pairs of measurements, each pair's samples interleaved in a random
order so that noise from a shared machine falls on both alike; each pair is compared
with a two-sample Kolmogorov-Smirnov test and Welch's t-test:

1. The comparison itself (`passlib.utils.consteq`, which is `hmac.compare_digest`):
   a stored 64-hex-digit HMAC against a candidate that differs from it in the first
   digit, and one that differs only in the last.
2. `KeyHasher.verify` on a key in the default scheme (HMAC-SHA256 with the pepper):
   a wrong secret whose HMAC differs from the stored one in its first hex digit,
   and a wrong secret found by search whose HMAC matches the stored one's first
   four hex digits (16 bits) - what an attacker refining a guess would send.
3. The same for an imported key (pbkdf2_sha256, 1,000 rounds to keep the search
   short): first byte differing against first byte matching.
4. What does differ: `KeyVerifier.verify` (memory store, every credential new, so
   no cache hit) with a wrong secret for a known key id, against a well-formed key
   whose id no key has.

For 1-3 a p-value far from 0 means the two cannot be told apart from these
samples; for 4 the difference is the cost of one HMAC, and tells only whether the
key id exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import math
import random
import statistics
import time
from collections.abc import Callable

from passlib.hash import pbkdf2_sha256
from passlib.utils import consteq

from apiguard import InvalidCredentials
from apiguard.keys import KeyHasher, KeyManager, KeyVerifier, MemoryKeyStore
from apiguard.keys.format import format_key, generate_key, parse_key

PEPPER = "benchmark-pepper-0123456789abcdefghijklmnop"


def ks_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value."""
    xs, ys = sorted(a), sorted(b)
    n, m = len(xs), len(ys)
    i = j = 0
    d = 0.0
    while i < n and j < m:
        value = min(xs[i], ys[j])
        while i < n and xs[i] <= value:
            i += 1
        while j < m and ys[j] <= value:
            j += 1
        d = max(d, abs(i / n - j / m))
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t statistic and its two-sided p-value (normal approximation: n is large)."""
    va, vb = statistics.variance(a), statistics.variance(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va / len(a) + vb / len(b))
    return t, math.erfc(abs(t) / math.sqrt(2))


def interleaved(
    fn: Callable[[str], object], first: str, second: str, samples: int, batch: int
) -> tuple[list[float], list[float]]:
    """`samples` timings (ns per call, over `batch` calls) of `fn(first)` and of
    `fn(second)`, in a random order: one code path, only the data differs."""
    times: tuple[list[float], list[float]] = ([], [])
    order = [0, 1] * samples
    random.shuffle(order)
    args = (first, second)
    for which in order:
        # A new object each sample: where in memory a string lies moves a comparison
        # by a fraction of a nanosecond, whatever it holds (two copies of one string
        # tell apart as well as two strings do); new copies spread that over both.
        arg = "".join(list(args[which]))
        started = time.perf_counter_ns()
        for _ in range(batch):
            fn(arg)
        times[which].append((time.perf_counter_ns() - started) / batch)
    return times


def report(name: str, labels: tuple[str, str], a: list[float], b: list[float]) -> None:
    d, p_ks = ks_test(a, b)
    t, p_t = welch(a, b)
    print(f"\n{name}")
    for label, values in zip(labels, (a, b), strict=True):
        print(
            f"  {label:<46} median {statistics.median(values):10.1f} ns"
            f"  mean {statistics.fmean(values):10.1f} ns"
        )
    print(f"  KS D = {d:.4f}, p = {p_ks:.3f}; Welch t = {t:+.2f}, p = {p_t:.3f}")


def near_miss(stored: str, matching: int, digest: Callable[[str], str]) -> str:
    """A secret whose digest starts like `stored` for `matching` characters, not more."""
    n = 0
    while True:
        candidate = f"guess-{n}"
        value = digest(candidate)
        if value[:matching] == stored[:matching] and value[matching] != stored[matching]:
            return candidate
        n += 1


def far_miss(stored: str, digest: Callable[[str], str]) -> str:
    n = 0
    while digest(f"other-{n}")[0] == stored[0]:
        n += 1
    return f"other-{n}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=4000)
    args = parser.parse_args()
    samples = args.samples
    hasher = KeyHasher(PEPPER)

    # 1. The comparison itself.
    stored = hmac.new(b"k", b"secret", "sha256").hexdigest()
    first = ("0" if stored[0] != "0" else "1") + stored[1:]
    last = stored[:-1] + ("0" if stored[-1] != "0" else "1")
    a, b = interleaved(lambda c: consteq(c, stored), first, last, samples, batch=200)
    report(
        "1. consteq: 64 hex digits",
        ("differs in the first digit", "differs in the last digit only"),
        a,
        b,
    )
    copy = "".join(list(first))  # equal, another object: the test's own noise floor
    a, b = interleaved(lambda c: consteq(c, stored), first, copy, samples, batch=200)
    report(
        "1'. control: the same candidate twice",
        ("differs in the first digit", "the same, another copy"),
        a,
        b,
    )

    # 2. The default scheme, the whole verification.
    secret = generate_key().secret
    secret_hash = hasher.hash(secret)
    checksum = secret_hash.rsplit("$", 1)[1]

    def hmac_hex(candidate: str) -> str:
        return hmac.new(PEPPER.encode(), candidate.encode(), "sha256").hexdigest()

    assert hmac_hex(secret) == checksum
    close, far = near_miss(checksum, 4, hmac_hex), far_miss(checksum, hmac_hex)
    a, b = interleaved(lambda c: hasher.verify(c, secret_hash), far, close, samples, batch=20)
    report(
        "2. KeyHasher.verify, default scheme (HMAC-SHA256)",
        ("wrong secret, HMAC differs in digit 1", "wrong secret, HMAC matches digits 1-4"),
        a,
        b,
    )

    # 3. An imported slow hash.
    slow = pbkdf2_sha256.using(rounds=1000)
    slow_hash = slow.hash(secret)
    salt = pbkdf2_sha256.from_string(slow_hash).salt

    def pbkdf2_hex(candidate: str) -> str:
        return str(pbkdf2_sha256.from_string(slow.using(salt=salt).hash(candidate)).checksum.hex())

    close, far = (
        near_miss(pbkdf2_hex(secret), 2, pbkdf2_hex),
        far_miss(pbkdf2_hex(secret), pbkdf2_hex),
    )
    a, b = interleaved(lambda c: hasher.verify(c, slow_hash), far, close, samples // 4, batch=2)
    report(
        "3. KeyHasher.verify, imported pbkdf2_sha256 (1,000 rounds)",
        ("wrong secret, hash differs in byte 1", "wrong secret, hash matches byte 1"),
        a,
        b,
    )

    # 4. Known key id against unknown key id, through the verifier.
    asyncio.run(known_against_unknown(hasher, samples))


async def known_against_unknown(hasher: KeyHasher, samples: int) -> None:
    store = MemoryKeyStore()
    issued = await KeyManager(store, hasher).create("a")
    verifier = KeyVerifier(store, hasher)
    parsed = parse_key(issued.key)
    times: tuple[list[float], list[float]] = ([], [])
    order = [0, 1] * samples
    random.shuffle(order)
    for which in order:
        if which == 0:  # the key's id, a new wrong secret: a store hit and an HMAC
            key = format_key(parsed.prefix, parsed.key_id, generate_key().secret)
        else:  # a new, well-formed key whose id no key has: a store miss
            key = generate_key().value
        raw = key.encode()
        started = time.perf_counter_ns()
        with contextlib.suppress(InvalidCredentials):
            await verifier.verify(raw)
        times[which].append(time.perf_counter_ns() - started)
    report(
        "4. KeyVerifier.verify, memory store, nothing cached",
        ("wrong secret for a known key id", "unknown key id"),
        *times,
    )


if __name__ == "__main__":
    main()
