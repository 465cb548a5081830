"""DKIM key generation, key files and the published record (mxd.msgauth.dkimkeys, CLI)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from mxd.cli import main
from mxd.msgauth.dkimkeys import DKIMKeyError, generate_key, load_key


def _tags(txt: str) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in txt.split(";"))


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_generate_writes_private_file_0600_and_round_trips(tmp_path: Path, algorithm: str) -> None:
    """The key file is mode 0600 under KEY_DIR/DOMAIN/ and loads back as the same key."""
    key = generate_key(tmp_path, "Example.ORG", "sel1", algorithm)  # type: ignore[arg-type]
    assert key.path == tmp_path / "example.org" / "sel1.pem"
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.path.parent.stat().st_mode) == 0o700
    back = load_key(tmp_path, "example.org", "sel1")
    assert back.algorithm == algorithm
    assert back.txt == key.txt
    assert key.dns_name == "sel1._domainkey.example.org"


def test_rsa_record_is_spki_of_2048_bits(tmp_path: Path) -> None:
    """RFC 6376 §3.6.1: p= is the base64 SubjectPublicKeyInfo; the key has 2048 bits."""
    key = generate_key(tmp_path, "example.org", "r", "rsa")
    tags = _tags(key.txt)
    assert tags["v"] == "DKIM1" and tags["k"] == "rsa"
    pub = load_der_public_key(base64.b64decode(tags["p"]))
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048


def test_ed25519_record_is_raw_32_octets(tmp_path: Path) -> None:
    """RFC 8463 §4.2: p= is the raw 32-octet Ed25519 public key."""
    key = generate_key(tmp_path, "example.org", "e", "ed25519")
    tags = _tags(key.txt)
    raw = base64.b64decode(tags["p"])
    assert tags["k"] == "ed25519" and len(raw) == 32
    ed25519.Ed25519PublicKey.from_public_bytes(raw)


def test_zone_line_splits_long_records_into_255_octet_strings(tmp_path: Path) -> None:
    """An RSA-2048 record is longer than one DNS character-string (255 octets)."""
    key = generate_key(tmp_path, "example.org", "r", "rsa")
    line = key.zone_line()
    assert line.startswith("r._domainkey.example.org. IN TXT ")
    strings = line.split(" IN TXT ", 1)[1].split('" "')
    assert len(strings) >= 2 and all(len(s.strip('"')) <= 255 for s in strings)
    assert "".join(s.strip('"') for s in strings) == key.txt


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    """A second genkey under the same selector would orphan the published record."""
    generate_key(tmp_path, "example.org", "s", "ed25519")
    with pytest.raises(DKIMKeyError, match="exists"):
        generate_key(tmp_path, "example.org", "s", "ed25519")


@pytest.mark.parametrize("selector", ["-bad", "a_b", "x..y", "sp ace"])
def test_bad_selector_refused(tmp_path: Path, selector: str) -> None:
    """RFC 6376 §3.1 selector syntax is checked before anything is written."""
    with pytest.raises(DKIMKeyError, match="selector"):
        generate_key(tmp_path, "example.org", selector, "ed25519")
    assert not any(tmp_path.iterdir())


def test_small_rsa_refused(tmp_path: Path) -> None:
    """RFC 8301 §3.2: RSA keys under 1024 bits are not generated."""
    with pytest.raises(DKIMKeyError, match="1024"):
        generate_key(tmp_path, "example.org", "s", "rsa", rsa_bits=512)


def test_load_missing_or_garbage_key_names_the_file(tmp_path: Path) -> None:
    """A missing or broken key file gives an error naming the path."""
    with pytest.raises(DKIMKeyError, match="nope.pem"):
        load_key(tmp_path, "example.org", "nope")
    (tmp_path / "example.org").mkdir()
    (tmp_path / "example.org" / "bad.pem").write_text("garbage")
    with pytest.raises(DKIMKeyError, match="bad.pem"):
        load_key(tmp_path, "example.org", "bad")


def test_cli_genkey_both_prints_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mxd dkim genkey DOMAIN` makes an RSA and an Ed25519 key and prints both records."""
    rc = main(["dkim", "genkey", "--key-dir", str(tmp_path), "example.org",
               "-s", "r1", "-s", "e1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'r1._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=' in out
    assert 'e1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=' in out
    assert sorted(p.name for p in (tmp_path / "example.org").iterdir()) == ["e1.pem", "r1.pem"]
    rc = main(["dkim", "genkey", "--key-dir", str(tmp_path), "example.org",
               "-s", "r1", "-s", "e1"])
    assert rc == 1 and "exists" in capsys.readouterr().err


def test_cli_records_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mxd dkim records` prints the record of every configured selector."""
    generate_key(tmp_path / "data" / "dkim", "example.org", "e1", "ed25519")
    cfg = tmp_path / "mxd.toml"
    cfg.write_text(f'hostname = "mx.example.org"\ndata_dir = "{tmp_path / "data"}"\n'
                   '[dkim]\nselectors = { "example.org" = ["e1"] }\n')
    assert main(["dkim", "records", "--config", str(cfg)]) == 0
    assert 'e1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519;' in capsys.readouterr().out


def test_dkimpy_verifies_with_generated_key_and_record(tmp_path: Path) -> None:
    """dkimpy (an independent implementation) parses our key file and record pair: a
    message it signs with our private key verifies against our published record."""
    import dkim

    key = generate_key(tmp_path, "example.org", "s1", "rsa")
    assert key.path is not None
    msg = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
    sig = dkim.sign(msg, b"s1", b"example.org", key.path.read_bytes(),
                    include_headers=[b"from", b"to", b"subject"])

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.example.org."
        return key.txt.encode()

    assert dkim.verify(sig + msg, dnsfunc=dnsfunc)
