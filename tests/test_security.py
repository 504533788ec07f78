"""``mooncake.security``: which addresses may be used without TLS."""

from __future__ import annotations

import pytest

from mooncake.security import TLSFiles, check_address, client_security, is_loopback, uses_tls


def test_loopback_detection() -> None:
    """Loopback addresses and names are loopback; wildcard and routable addresses are not."""
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.3.4.5")
    )
    assert (
        not is_loopback("0.0.0.0")
        and not is_loopback("10.1.2.3")
        and not is_loopback("")
        and not is_loopback("::")
    )


def test_plain_tcp_off_the_loopback_is_refused_unless_insecure() -> None:
    """tcp:// to a routable address is a ValueError naming the field and the remedy;
    --insecure, TLS or the loopback let it through."""
    with pytest.raises(ValueError, match=r"scheduler: .*--insecure"):
        check_address("tcp://10.1.2.3:8786", tls=False, insecure=False, what="scheduler")
    check_address("tcp://10.1.2.3:8786", tls=False, insecure=True, what="scheduler")
    check_address("tls://10.1.2.3:8786", tls=True, insecure=False, what="scheduler")
    check_address("tcp://127.0.0.1:8786", tls=False, insecure=False, what="scheduler")


def test_tls_files_make_a_requiring_security() -> None:
    """Given files, the client's Security requires encryption, so a scheme-less address
    is TLS; a tcp:// address stays plain (and is refused off the loopback)."""
    sec = client_security(TLSFiles("ca.pem", "cert.pem", "key.pem"))
    assert (
        sec.require_encryption and sec.tls_ca_file == "ca.pem" and sec.tls_client_cert == "cert.pem"
    )
    assert uses_tls("10.1.2.3:8786", sec) and uses_tls("tls://10.1.2.3:8786", sec)
    assert not uses_tls("tcp://10.1.2.3:8786", sec)
    assert not uses_tls("tcp://10.1.2.3:8786", client_security(None))


def test_tls_files_are_checked_together() -> None:
    """A certificate without its CA (or a key without a certificate) is a ValueError."""
    with pytest.raises(ValueError, match="tls"):
        TLSFiles(cert="cert.pem")
    with pytest.raises(ValueError, match="tls"):
        TLSFiles(key="key.pem")
