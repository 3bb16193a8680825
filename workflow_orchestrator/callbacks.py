"""Callback URLs: which a workflow may be given, and where a call to one may go.

Only hosts ORCH_WEBHOOK_ALLOWED_HOSTS allows are called, and an address that is not public
(private, loopback, link-local, reserved) only when its host is named there exactly:
checked when the URL is given (`validate_callback_url`) and again before every attempt
(`check`: DNS may have changed), and the request goes to the address that was checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from django.core.exceptions import ValidationError

from . import values
from .conf import app_settings

MAX_URL_LENGTH = 2000
# http.client writes the request line and headers in ASCII, and refuses spaces and control
# characters in them: a URL with any other character cannot be sent at all.
UNSENDABLE = re.compile(r"[^!-~]")


class Refused(Exception):
    """A URL the settings do not allow calling."""


# --- Which URLs may be called ---------------------------------------------------------------


def _allowed(host: str) -> str | None:
    """ "exact" for a host named in ORCH_WEBHOOK_ALLOWED_HOSTS, "public" for one a wildcard
    covers (its addresses must then be public), None for any other. Host names are
    compared without regard to case, as DNS does."""
    allowed = [pattern.lower() for pattern in app_settings.ORCH_WEBHOOK_ALLOWED_HOSTS]
    if host in allowed:
        return "exact"
    if "*" in allowed or any(pattern.startswith("*.") and host.endswith(pattern[1:]) for pattern in allowed):
        return "public"
    return None


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:127.0.0.1 is 127.0.0.1
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass
class Target:
    parts: SplitResult
    address: str  # the checked address the request goes to


def check(url: str) -> Target:
    """Where `url` may be called, resolved now; Refused says why it may not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused("only http and https URLs can be called")
    if unsendable := UNSENDABLE.search(url):
        raise Refused(
            f"it holds {unsendable.group()!r}, which a request cannot carry: percent-encode any character of "
            "its path and query that is not printable ASCII (é as %C3%A9, a space as %20), and write an "
            "international host name in its xn-- form"
        )
    try:
        host, port = (parts.hostname or "").rstrip(".").lower(), parts.port
    except ValueError:
        raise Refused("its port is not a number from 0 to 65535") from None
    if not host:
        raise Refused("it names no host")
    if parts.username or parts.password:
        raise Refused("it must not carry a user name or password")
    allowed = _allowed(host)
    if allowed is None:
        raise Refused(f"the host {host} is not allowed by ORCH_WEBHOOK_ALLOWED_HOSTS")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError):
        raise Refused(f"the host {host} does not resolve") from None
    if allowed != "exact":
        for address in addresses:
            if not _is_public(address):
                raise Refused(
                    f"the host {host} resolves to {address}, which is not a public address"
                    " (private, loopback, link-local or reserved): name the host in ORCH_WEBHOOK_ALLOWED_HOSTS"
                )
    return Target(parts, addresses[0])


def validate_callback_url(url) -> str:
    """The callback_url to store ("" for none); ValidationError naming callback_url."""
    if url in (None, ""):
        return ""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        problem = f"must be a URL of at most {MAX_URL_LENGTH} characters"
    elif problem := values.text_problem(url):
        pass
    elif not app_settings.ORCH_WEBHOOK_SECRET:
        problem = "cannot be called: the server has no ORCH_WEBHOOK_SECRET to sign webhooks with"
    else:
        try:
            check(url)
            return url
        except Refused as exc:
            problem = f"is refused: {exc}"
    raise ValidationError({"callback_url": [f"callback_url {problem}"]})
