"""Noise's AEAD (ChaCha20-Poly1305 from OpenSSL through ``cryptography``): the same
primitive, with the same nonce encoding, as libsodium's; failures opaque."""

from __future__ import annotations

import copy

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st

from starmux.errors import CryptoError
from starmux.noise.primitives import MAX_NONCE, Aead, aead_decrypt, aead_encrypt

KEY = bytes(range(32))


def libsodium_nonce(n: int) -> bytes:
    return bytes(4) + n.to_bytes(8, "little")


@given(
    n=st.integers(min_value=0, max_value=MAX_NONCE),
    ad=st.binary(max_size=64),
    plaintext=st.binary(max_size=2048),
)
def test_it_agrees_with_libsodium_both_ways(n: int, ad: bytes, plaintext: bytes) -> None:
    ours = Aead(KEY).encrypt(n, ad, plaintext)
    theirs = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        plaintext, ad, libsodium_nonce(n), KEY
    )
    assert ours == theirs
    assert aead_decrypt(KEY, n, ad, theirs) == plaintext


@pytest.mark.parametrize(
    "ciphertext",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00" * 15, id="shorter-than-a-tag"),
        pytest.param(bytearray(32), id="not-bytes"),
    ],
)
def test_malformed_ciphertext_is_an_opaque_crypto_error(ciphertext: bytes) -> None:
    with pytest.raises(CryptoError) as caught:
        Aead(KEY).decrypt(0, b"", ciphertext)
    assert caught.value.__cause__ is None


def test_a_tampered_message_or_wrong_nonce_or_ad_fails_opaquely() -> None:
    sealed = aead_encrypt(KEY, 7, b"ad", b"hello")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for n, ad, ciphertext in ((7, b"ad", tampered), (8, b"ad", sealed), (7, b"", sealed)):
        with pytest.raises(CryptoError) as caught:
            Aead(KEY).decrypt(n, ad, ciphertext)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_copy_decrypts_on_its_own_and_the_key_never_shows() -> None:
    original = Aead(KEY)
    twin = copy.deepcopy(original)
    sealed = original.encrypt(1, b"", b"x")
    assert twin.decrypt(1, b"", sealed) == b"x"
    assert KEY.hex() not in repr(original) and "key hidden" in repr(original)
