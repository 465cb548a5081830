"""Host keys: generated once, mode 0600, never overwritten; bad files give clear errors."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mxd import hostkeys
from mxd.hostkeys import HostKeyError, KeyKind


def test_ensure_generates_both_keys_with_mode_0600_and_keeps_them(tmp_path):
    """ensure() makes an RSA-2048 and an ECDSA P-256 key (0600); a second call loads the
    same keys instead of making new ones."""
    first = hostkeys.ensure(tmp_path)
    assert [k.kind for k in first] == [KeyKind.RSA2048, KeyKind.ECDSAP256]
    assert isinstance(first[0].key, rsa.RSAPrivateKey) and first[0].key.key_size == 2048
    assert isinstance(first[1].key, ec.EllipticCurvePrivateKey)
    for k in first:
        assert os.stat(k.path).st_mode & 0o777 == 0o600
    again = hostkeys.ensure(tmp_path)
    assert [k.spki_sha256 for k in again] == [k.spki_sha256 for k in first]


def test_write_private_refuses_to_overwrite(tmp_path):
    """A key file that exists is never replaced."""
    path = tmp_path / "k.pem"
    path.write_bytes(b"old")
    with pytest.raises(HostKeyError, match="refusing to overwrite"):
        hostkeys.write_private(path, b"new")
    assert path.read_bytes() == b"old"


@pytest.mark.parametrize("content,mode,problem", [
    (None, 0o644, "readable by others"),
    (b"not a key", 0o600, "not an unencrypted PEM private key"),
])
def test_load_errors_name_the_file_and_the_fix(tmp_path, content, mode, problem):
    """A world-readable key or a non-key names the file and what to do."""
    path = tmp_path / "k.pem"
    if content is None:
        hostkeys.write_private(path, hostkeys.HostKey(
            KeyKind.ECDSAP256, path, hostkeys.generate(KeyKind.ECDSAP256)).pem())
    else:
        path.write_bytes(content)
    os.chmod(path, mode)
    with pytest.raises(HostKeyError, match=problem) as e:
        hostkeys.load(path)
    assert str(path) in str(e.value)


def test_other_curves_are_refused(tmp_path):
    """Only P-256 ECDSA keys are host keys (what TLSA 3 1 1 and every client support)."""
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "k.pem"
    hostkeys.write_private(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(HostKeyError, match="P-256"):
        hostkeys.load(path)
