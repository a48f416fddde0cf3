"""SigningKey and the development key-file loader."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import coincurve
import pytest
from anvil_support import DEV_ADDR_0, DEV_KEY_0
from eth_utils import to_checksum_address

from enclave.errors import KeyLoadError
from enclave.keys import KeyOrigin, SigningKey, checksum_address, load_dev_key

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_address_and_public_key() -> None:
    key = SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV)
    assert key.address == DEV_ADDR_0
    assert key.public_key == coincurve.PrivateKey(DEV_KEY_0).public_key.format(compressed=False)
    assert checksum_address(key.address_bytes) == to_checksum_address(key.address_bytes)


@pytest.mark.parametrize("seed", range(5))
def test_checksum_matches_eth_utils(seed: int) -> None:
    addr = bytes((seed * 37 + i * 11) % 256 for i in range(20))
    assert checksum_address(addr) == to_checksum_address(addr)


def test_sign_digest_recovers_and_is_low_s() -> None:
    key = SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV)
    digest = bytes(range(32))
    sig = key.sign_digest(digest)
    assert len(sig) == 65 and sig[64] in (0, 1)
    assert int.from_bytes(sig[32:64], "big") <= N // 2
    recovered = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    assert recovered.format(compressed=False) == key.public_key


def test_repr_pickle_copy_never_expose_the_secret() -> None:
    key = SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV)
    assert DEV_KEY_0.hex() not in repr(key) and DEV_KEY_0.hex() not in str(key)
    assert "origin=dev" in repr(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.copy(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)


@pytest.mark.parametrize(
    "secret,match",
    [(bytes(32), "valid secp256k1 scalar"), (N.to_bytes(32, "big"), "valid secp256k1 scalar"),
     (b"\x01" * 31, "32 bytes")],
    ids=["zero", "order", "short"],
)  # fmt: skip
def test_invalid_secrets(secret: bytes, match: str) -> None:
    with pytest.raises(KeyLoadError, match=match):
        SigningKey(secret, origin=KeyOrigin.KMS)


def test_origin_must_be_typed() -> None:
    with pytest.raises(TypeError):
        SigningKey(DEV_KEY_0, origin="dev")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "content",
    [DEV_KEY_0.hex(), "0x" + DEV_KEY_0.hex() + "\n", "  " + DEV_KEY_0.hex().upper() + "\r\n"],
    ids=["plain", "0x-newline", "upper-whitespace"],
)
def test_load_dev_key(tmp_path: Path, content: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    key = load_dev_key(path)
    assert key.address == DEV_ADDR_0 and key.origin is KeyOrigin.DEV


@pytest.mark.parametrize(
    "content,match",
    [
        (DEV_KEY_0.hex()[:-1], "expected 64 hex digits"),
        (DEV_KEY_0.hex() + "00", "expected 64 hex digits"),
        ("zz" + DEV_KEY_0.hex()[2:], "not hexadecimal"),
        ("00" * 32, "valid secp256k1 scalar"),
        ("a" * 5000, "larger than"),
        ("", "expected 64 hex digits"),
    ],
    ids=["short", "long", "not-hex", "zero", "huge", "empty"],
)
def test_load_dev_key_errors_never_echo_content(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    with pytest.raises(KeyLoadError, match=match) as info:
        load_dev_key(path)
    assert str(path) in info.value.diagnostics()
    chain: list[BaseException] = []
    e: BaseException | None = info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    for err in chain:
        text = str(err).lower()
        assert DEV_KEY_0.hex()[:16] not in text and "zz" not in text and "aaaaaaaa" not in text


def test_load_dev_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError, match="cannot read"):
        load_dev_key(tmp_path / "absent")
