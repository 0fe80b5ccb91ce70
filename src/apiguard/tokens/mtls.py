"""Client certificates for certificate-bound access tokens (RFC 8705 §3).

A token bound to a certificate carries `cnf."x5t#S256"`: the base64url SHA-256 of
the certificate's DER encoding (§3.1). `ClientCertificates` says where a request's
client certificate is found:

- the ASGI TLS extension (`scope["extensions"]["tls"]["client_cert_chain"]`, PEM),
  when the server terminates TLS itself and fills it in (uvicorn 0.54 does not);
- a header set by a TLS-terminating proxy, read only when the connection comes
  from one of `trusted_proxies` (RFC 9700 §4.13). The header carries the PEM
  certificate URL-encoded: nginx `proxy_set_header X-Client-Cert
  $ssl_client_escaped_cert;`, or Envoy's `x-forwarded-client-cert` with one element
  holding `Cert="..."`.

The chain is not validated (§6.2: the binding only proves possession of the key).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Collection
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from apiguard.exceptions import ConfigurationError
from apiguard.tokens.dpop import b64url
from apiguard.types import Scope

__all__ = ["ClientCertificates", "certificate_thumbprint"]

MAX_CERT_HEADER = 16384  # bytes: an escaped PEM certificate is rarely above 4,000
_XFCC_CERT = re.compile(r'(?:^|;)\s*Cert="?([^";]*)"?', re.IGNORECASE)
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def certificate_thumbprint(pem: str | bytes) -> str:
    """`x5t#S256` of a PEM certificate: base64url(SHA-256(DER)), no padding (RFC 8705 §3.1).

    Raises:
        ValueError: Not a PEM certificate.
    """
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    cert = x509.load_pem_x509_certificate(data)
    return b64url(hashlib.sha256(cert.public_bytes(Encoding.DER)).digest())


class ClientCertificates:
    """Where the client certificate of a request comes from.

    Args:
        tls_extension: Read the ASGI TLS extension when the server provides it.
        header: The request header a trusted proxy puts the URL-encoded PEM client
            certificate in (`X-Client-Cert`, `X-Forwarded-Client-Cert`), or `None`.
        trusted_proxies: Addresses or networks (`"10.0.0.0/8"`) of the proxies
            whose `header` is believed; from any other client it is ignored.
            Required with `header`.
    """

    def __init__(
        self,
        *,
        tls_extension: bool = True,
        header: str | None = None,
        trusted_proxies: Collection[str] = (),
    ) -> None:
        if isinstance(trusted_proxies, str):
            raise ConfigurationError("trusted_proxies takes a collection, not str")
        if header is not None and not trusted_proxies:
            raise ConfigurationError(
                "a client certificate header needs trusted_proxies: only a proxy may set it"
            )
        if header is None and not tls_extension:
            raise ConfigurationError(
                "no source of client certificates: set header or tls_extension"
            )
        try:
            self._proxies: tuple[_Network, ...] = tuple(
                ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies
            )
        except ValueError as exc:
            raise ConfigurationError(f"trusted_proxies: {exc}") from None
        self._header = header.strip().lower().encode("latin-1") if header else None
        self._tls = tls_extension

    def __repr__(self) -> str:
        header = self._header.decode() if self._header else None
        return f"ClientCertificates(tls_extension={self._tls}, header={header!r})"

    def thumbprint(self, scope: Scope) -> str | None:
        """The `x5t#S256` of the request's client certificate, or `None` if it has none.

        A certificate that cannot be read, or a header sent twice, counts as none.
        """
        if self._tls:
            tls = scope.get("extensions", {}).get("tls")
            chain = tls.get("client_cert_chain") if isinstance(tls, dict) else None
            if chain:
                try:
                    return certificate_thumbprint(next(iter(chain)))
                except (ValueError, TypeError):
                    return None
        if self._header is not None and self._from_proxy(scope):
            return self._from_header(scope)
        return None

    def _from_proxy(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self._proxies)

    def _from_header(self, scope: Scope) -> str | None:
        values = [value for name, value in scope["headers"] if name == self._header]
        if len(values) != 1 or len(values[0]) > MAX_CERT_HEADER:
            return None
        text = values[0].decode("latin-1").strip()
        if not text.startswith("-----BEGIN"):
            # Envoy XFCC: one element `By=...;Hash=...;Cert="<URL-encoded PEM>"`.
            match = _XFCC_CERT.search(text)
            if match is None or "," in text.replace(match.group(0), ""):
                return None
            text = match.group(1)
        try:
            return certificate_thumbprint(unquote(text))
        except (ValueError, UnicodeEncodeError):
            return None
