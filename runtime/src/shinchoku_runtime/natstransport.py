"""TLS for the platform's NATS connections: the client side of what `natsconf` renders for the servers.

A deployment's NATS servers require TLS on the client port (and on the cluster routes); every connection then
verifies the server's certificate against the deployment's CA (`SHINCHOKU_{SERVICE}_NATS_TLS_CA_FILE`) and, where
the servers ask for one, presents a client certificate (`…_NATS_TLS_CERT_FILE` / `…_NATS_TLS_KEY_FILE`). The
embedded default (`shinchoku up`) listens on loopback only and uses none of this.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any


def tls_context(ca_file: Path, *, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """A client context that trusts only `ca_file`, checks the host name, speaks TLS 1.2 or later, and presents a
    client certificate when one is given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if (cert_file is None) != (key_file is None):
        raise ValueError("a NATS client certificate needs both its cert file and its key file")
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file))
    return context


def tls_options(
    ca_file: Path | None, *, cert_file: Path | None = None, key_file: Path | None = None, hostname: str | None = None
) -> dict[str, Any]:
    """The nats-py `connect` options for TLS (none without a CA file: the embedded default on loopback)."""
    if ca_file is None:
        if cert_file is not None or key_file is not None:
            raise ValueError("a NATS client certificate is set without the CA file that verifies the servers")
        return {}
    options: dict[str, Any] = {"tls": tls_context(ca_file, cert_file=cert_file, key_file=key_file)}
    if hostname:
        options["tls_hostname"] = hostname
    return options
