"""The local certificate authority used to intercept TLS (docs/policies.md, CONNECT).

Created on first start under ``proxy.ca_dir`` and reused on every later start, so that an
agent trusts it once (``hitl-proxy ca export``). Two files:

``ca.pem``      the CA certificate, the only thing agents need (``curl --cacert``, ...);
``ca-key.pem``  its private key, mode 0600 in a 0700 folder: whoever reads it can
                impersonate any host to every agent that trusts the CA.

Why these choices:

* EC P-256 keys: signing a leaf takes well under a millisecond, so a new host costs no
  visible latency, and every TLS stack in use accepts them.
* ``CA:true, pathlen:0``: this CA signs leaf certificates only, never another CA.
* Leaf certificates live 7 days, backdated 1 hour (clients with a slightly slow clock
  must not see "not yet valid"). They are made on demand per host, never written to disk,
  and kept as ready ``ssl.SSLContext`` objects in a small LRU. All leaves share one key
  made at start: the key is as secret as the CA's, lives only in memory, and saves a key
  generation per host.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import ssl
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.errors import ConfigError
from proxy.files import private_dir

CA_NAME = "hitl-proxy local CA"
CERT_FILE = "ca.pem"
KEY_FILE = "ca-key.pem"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=7)
LEAF_BACKDATE = dt.timedelta(hours=1)
LEAF_REFRESH = 24 * 3600.0  # a cached leaf is remade when it has less than a day left
LEAF_CACHE_SIZE = 512


@dataclass(slots=True)
class _Leaf:
    context: ssl.SSLContext
    expires: float  # unix time


class CertificateAuthority:
    def __init__(self, cert_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert_path = cert_path
        self.key_path = cert_path.parent / KEY_FILE
        self.cert = cert
        self._key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaves: OrderedDict[str, _Leaf] = OrderedDict()

    # -- the CA itself -------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, ca_dir: Path) -> CertificateAuthority:
        """The CA under ``ca_dir``: loaded when both files exist, created when neither does.
        Anything else (one file missing, unreadable, not a CA) is a ``ConfigError``: silently
        making a new CA would break every agent that trusts the old one."""
        ca_dir = Path(ca_dir)
        cert_path, key_path = ca_dir / CERT_FILE, ca_dir / KEY_FILE
        try:
            if not cert_path.exists() and not key_path.exists():
                _create(ca_dir)
            return cls._load(cert_path, key_path)
        except OSError as exc:
            raise ConfigError("proxy.ca_dir", f"cannot use the CA in {ca_dir}: {exc.strerror or exc}") from exc

    @classmethod
    def _load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        for path in (cert_path, key_path):
            if not path.exists():
                raise ConfigError("proxy.ca_dir", f"{path} is missing while its pair exists; restore it, "
                                  "or remove both files to make a new CA (agents must then trust it again)")
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise ConfigError("proxy.ca_dir", f"cannot read the CA in {cert_path.parent}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("proxy.ca_dir", f"{key_path} is not an EC private key")
        cert_key = cert.public_key()
        if (not isinstance(cert_key, ec.EllipticCurvePublicKey)
                or cert_key.public_numbers() != key.public_key().public_numbers()):
            raise ConfigError("proxy.ca_dir", f"{cert_path} and {key_path} do not belong together")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise ConfigError("proxy.ca_dir", f"{cert_path} is not a CA certificate")
        return cls(cert_path, cert, key)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate, for the operator to compare with what agents trust."""
        return self.cert.fingerprint(hashes.SHA256()).hex(":").upper()

    # -- leaf certificates ---------------------------------------------------------------
    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a leaf for ``host`` (a DNS name or an IP)."""
        host = host.lower().rstrip(".")
        now = time.time()
        leaf = self._leaves.get(host)
        if leaf is not None and leaf.expires - now > LEAF_REFRESH:
            self._leaves.move_to_end(host)
            return leaf.context
        leaf = self._make_leaf(host)
        self._leaves[host] = leaf
        self._leaves.move_to_end(host)
        while len(self._leaves) > LEAF_CACHE_SIZE:
            self._leaves.popitem(last=False)
        return leaf.context

    def leaf_certificate(self, host: str) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            san = x509.DNSName(host)
        # CN is limited to 64 characters; the SAN is what clients check anyway.
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)] if len(host) <= 64 else [])
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - LEAF_BACKDATE)
            .not_valid_after(now + LEAF_VALIDITY)
            .add_extension(x509.SubjectAlternativeName([san]), critical=len(subject) == 0)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )

    def _make_leaf(self, host: str) -> _Leaf:
        cert = self.leaf_certificate(host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])  # the inner side speaks HTTP/1.1 only (h11)
        # ssl loads a certificate chain only from a file: write it to a private temporary
        # file, load it, and remove it at once. The leaf key never stays on disk.
        pem = (cert.public_bytes(serialization.Encoding.PEM)
               + self._leaf_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        fd, name = tempfile.mkstemp(prefix="hitl-leaf-", suffix=".pem")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            ctx.load_cert_chain(name)
        finally:
            os.unlink(name)
        return _Leaf(ctx, cert.not_valid_after_utc.timestamp())


def _create(ca_dir: Path) -> None:
    private_dir(ca_dir)  # and its missing parents (the data dir): 0700
    key = ec.generate_private_key(ec.SECP256R1())
    # The serialNumber attribute tells two installations' CAs apart in a trust store.
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hitl-proxy"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
    ])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - LEAF_BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # Key first, each file written under a temporary name and renamed: a crash or a second
    # process starting at the same moment never leaves a certificate without its key.
    if _write_atomic(ca_dir / KEY_FILE, key_pem, 0o600):
        _write_atomic(ca_dir / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> bool:
    """Write ``path`` unless it exists; False when another process wrote it first."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # unlike rename, fails when another process won the race
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
