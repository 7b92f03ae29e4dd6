"""WeCom callback crypto: SHA-1 signatures and AES-256-CBC message envelopes.

Layout (WeCom document 91144): the key is ``base64(EncodingAESKey + "=")`` (32 bytes) and the IV its
first 16 bytes; the plaintext is 16 random bytes, the message length (4 bytes, big-endian), the
message and the receive id (the CorpID for an app, ``""`` for an AI bot), PKCS#7-padded to a
multiple of 32 bytes. The signature is the SHA-1 of the sorted concatenation of token, timestamp,
nonce and ciphertext.

Every check fails closed with one of the errors below; they are part of the gateway's exception
tree, so the API renders them like any other error: 403 for a bad signature (nothing is decrypted
before the signature holds), 400 for anything wrong inside the envelope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ...errors import InvalidRequest, PermissionDenied

_BLOCK = 32  # WeCom pads to 32 bytes, not AES's 16
_AES_KEY = re.compile(r"^[A-Za-z0-9]{43}$")


class SignatureMismatch(PermissionDenied):
    """WeCom error -40001: the callback was not signed with this bot's Token."""

    default_code = "invalid_signature"

    def __init__(self) -> None:
        super().__init__("The WeCom signature does not match.")


class CiphertextInvalid(InvalidRequest):
    """WeCom error -40007: the ciphertext does not decrypt to a well-formed envelope."""

    default_code = "invalid_ciphertext"

    def __init__(self) -> None:
        super().__init__("The WeCom message could not be decrypted.")


class ReceiveIdMismatch(InvalidRequest):
    """WeCom error -40005: the envelope was sealed for another corp or bot."""

    default_code = "invalid_receive_id"

    def __init__(self) -> None:
        super().__init__("The WeCom message was sealed for another receiver.")


def signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypted])).encode()).hexdigest()


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte key behind an EncodingAESKey (43 letters and digits, as the admin console makes)."""
    if not _AES_KEY.match(encoding_aes_key):
        raise ValueError("EncodingAESKey must be 43 letters and digits")
    return base64.b64decode(encoding_aes_key + "=")


class WeComCrypto:
    """Seal and open one bot's callback messages."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        self._token = token
        self._key = aes_key(encoding_aes_key)
        self._receive_id = receive_id.encode()

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> None:
        expected = signature(self._token, timestamp, nonce, encrypted).encode()
        if not hmac.compare_digest(expected, msg_signature.encode()):
            raise SignatureMismatch()

    def open(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> bytes:
        """Verify, then decrypt: the message bytes, or an error; never one without the other."""
        self.verify(msg_signature, timestamp, nonce, encrypted)
        return self.decrypt(encrypted)

    def decrypt(self, encrypted: str) -> bytes:
        try:
            data = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise CiphertextInvalid() from None
        if not data or len(data) % 16:
            raise CiphertextInvalid()
        decryptor = self._cipher().decryptor()
        padded = decryptor.update(data) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= _BLOCK or pad > len(padded) or padded[-pad:] != bytes([pad]) * pad:
            raise CiphertextInvalid()
        plain = padded[:-pad]
        if len(plain) < 20:
            raise CiphertextInvalid()
        (length,) = struct.unpack(">I", plain[16:20])
        if 20 + length > len(plain):
            raise CiphertextInvalid()
        message, receive_id = plain[20 : 20 + length], plain[20 + length :]
        if not hmac.compare_digest(receive_id, self._receive_id):
            raise ReceiveIdMismatch()
        return message

    def encrypt(self, message: bytes) -> str:
        plain = secrets.token_bytes(16) + struct.pack(">I", len(message)) + message + self._receive_id
        pad = _BLOCK - len(plain) % _BLOCK
        encryptor = self._cipher().encryptor()
        data = encryptor.update(plain + bytes([pad]) * pad) + encryptor.finalize()
        return base64.b64encode(data).decode()

    def seal(self, message: bytes, timestamp: str, nonce: str) -> tuple[str, str]:
        """(ciphertext, signature) for a reply."""
        encrypted = self.encrypt(message)
        return encrypted, signature(self._token, timestamp, nonce, encrypted)

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))
