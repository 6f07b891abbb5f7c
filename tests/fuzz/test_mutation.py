"""The mutation fuzzer, bounded for ``make test`` (``make fuzz`` runs it at volume).

A few thousand datagrams per role: captured OpenSSL/GnuTLS handshakes and live
handshakes in every mode, mutated at every step, and established associations fed
their own traffic mutated.  No exception may escape; the figures are printed.
"""

from __future__ import annotations

import random

import pytest

from tests.fuzz.engine import Fuzzer, load_vectors, mutate
from tests.pki import Pki


@pytest.mark.parametrize("role", ["server", "client"])
def test_mutation_fuzzer_nothing_escapes(pki: Pki, role: str) -> None:
    report = Fuzzer(pki, seed=11).run(role, 6000)
    print("\n" + report.summary())
    assert report.escaped == 0, "\n".join(report.first_escapes)
    assert report.established > 10, "the fuzzer never reached an established association"
    assert sum(report.drops.values()) > report.datagrams // 4


def test_mutations_cover_every_kind_and_vectors_are_loaded() -> None:
    assert {v["suite"] for v in load_vectors()} >= {"TLS_PSK_WITH_AES_128_GCM_SHA256"}
    rng = random.Random(1)
    data = bytes(range(60))
    kinds = {mutate(rng, data, data[::-1])[0] for _ in range(2000)}
    assert kinds >= {"bitflip", "truncate", "dup_tail", "overwrite", "header", "splice",
                     "prefix_record", "hs_header", "random"}
