"""WeCom crypto: the public test vector, round trips, and every way an envelope can be wrong."""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from server.integrations.wecom.crypto import (
    CiphertextInvalid,
    ReceiveIdMismatch,
    SignatureMismatch,
    WeComCrypto,
    aes_key,
    signature,
)

# From the reference (wechatpy's tests).
TOKEN = "123456"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
RECEIVE_ID = "wx49f0ab532d5d035a"
MSG_SIGNATURE = "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96"
TIMESTAMP, NONCE = "1411443780", "437374425"
ECHOSTR = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="


@pytest.fixture
def crypto() -> WeComCrypto:
    return WeComCrypto(TOKEN, AES_KEY, RECEIVE_ID)


def test_public_vector_signature_and_plaintext(crypto: WeComCrypto) -> None:
    assert signature(TOKEN, TIMESTAMP, NONCE, ECHOSTR) == MSG_SIGNATURE
    assert crypto.open(MSG_SIGNATURE, TIMESTAMP, NONCE, ECHOSTR) == b"5927782489442352469"


@pytest.mark.parametrize("receive_id", [RECEIVE_ID, ""])  # app (CorpID) and AI bot (empty)
@pytest.mark.parametrize("message", [b"", b"x", "你好，订单在哪里？".encode() * 50, b"a" * 12])  # 12: 16+4+12+18 = 50
def test_round_trip(receive_id: str, message: bytes) -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, receive_id)
    encrypted, sig = crypto.seal(message, TIMESTAMP, NONCE)
    assert len(base64.b64decode(encrypted)) % 32 == 0
    assert crypto.open(sig, TIMESTAMP, NONCE, encrypted) == message


def test_a_full_block_of_padding_is_accepted() -> None:
    # 16 random + 4 length + 12 message = 32 bytes with an empty receive id: PKCS#7 adds 32 bytes of 0x20.
    crypto = WeComCrypto(TOKEN, AES_KEY, "")
    encrypted = crypto.encrypt(b"a" * 12)
    assert len(base64.b64decode(encrypted)) == 64
    assert crypto.decrypt(encrypted) == b"a" * 12


def test_random_prefix_differs_each_time(crypto: WeComCrypto) -> None:
    assert crypto.encrypt(b"same") != crypto.encrypt(b"same")


@pytest.mark.parametrize(
    "change",
    [
        {"msg_signature": "0" * 40},
        {"msg_signature": MSG_SIGNATURE.upper()},
        {"msg_signature": ""},
        {"msg_signature": "é" * 40},
        {"timestamp": "1411443781"},
        {"nonce": "437374426"},
    ],
)
def test_a_wrong_signature_is_refused_before_decrypting(crypto: WeComCrypto, change: dict[str, str]) -> None:
    args = {"msg_signature": MSG_SIGNATURE, "timestamp": TIMESTAMP, "nonce": NONCE, "encrypted": ECHOSTR} | change
    with pytest.raises(SignatureMismatch) as caught:
        crypto.open(**args)
    assert caught.value.status_code == 403


def test_the_signature_covers_the_ciphertext(crypto: WeComCrypto) -> None:
    tampered = ECHOSTR.replace("4ByG", "5ByG")
    with pytest.raises(SignatureMismatch):
        crypto.open(MSG_SIGNATURE, TIMESTAMP, NONCE, tampered)


def test_wrong_receive_id() -> None:
    sealed = WeComCrypto(TOKEN, AES_KEY, "another-corp").encrypt(b"hello")
    with pytest.raises(ReceiveIdMismatch) as caught:
        WeComCrypto(TOKEN, AES_KEY, RECEIVE_ID).decrypt(sealed)
    assert caught.value.status_code == 400


def _raw(plain: bytes) -> str:
    """Encrypt ``plain`` exactly as given (no padding added): for building bad envelopes."""
    key = aes_key(AES_KEY)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def _envelope(message: bytes, receive_id: bytes = RECEIVE_ID.encode(), length: int | None = None) -> bytes:
    return b"r" * 16 + struct.pack(">I", len(message) if length is None else length) + message + receive_id


def _padded(plain: bytes) -> bytes:
    pad = 32 - len(plain) % 32
    return plain + bytes([pad]) * pad


@pytest.mark.parametrize(
    "encrypted",
    [
        pytest.param("not base64!", id="not-base64"),
        pytest.param("", id="empty"),
        pytest.param(base64.b64encode(b"x" * 17).decode(), id="not-whole-blocks"),
        # _envelope(b"hi") is 40 bytes; each of these brings it to 64 with a flawed padding.
        pytest.param(_raw(_envelope(b"hi") + b"\x00" * 24), id="zero-padding"),
        pytest.param(_raw(_envelope(b"hi") + b"\x21" * 24), id="padding-over-32"),
        pytest.param(_raw(_envelope(b"hi") + b"\x18" * 10 + b"\x17" + b"\x18" * 13), id="inconsistent-padding"),
        pytest.param(_raw(_padded(b"short")), id="shorter-than-header"),
        pytest.param(_raw(_padded(_envelope(b"hi", length=10_000))), id="length-past-end"),
    ],
)
def test_malformed_ciphertext_is_refused(crypto: WeComCrypto, encrypted: str) -> None:
    with pytest.raises(CiphertextInvalid) as caught:
        crypto.decrypt(encrypted)
    assert caught.value.status_code == 400


def test_a_well_formed_handmade_envelope_decrypts(crypto: WeComCrypto) -> None:
    """The bad cases above differ from this one in exactly the flaw they name."""
    assert crypto.decrypt(_raw(_padded(_envelope(b"hi")))) == b"hi"


@pytest.mark.parametrize("key", ["", "short", AES_KEY + "A", AES_KEY[:-1] + "!"])
def test_encoding_aes_key_shape(key: str) -> None:
    with pytest.raises(ValueError):
        aes_key(key)
