#!/usr/bin/env python
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""This host's pip settings, made usable by pip inside a QEMU VM on user-mode networking.

The worker role's pip in the VM must reach the package index the way this host does. The host
may set an index or a proxy (pip config files or PIP_* variables, https_proxy) and may sit
behind a TLS-intercepting proxy whose CA only its own bundle has. Run with the Python whose pip
settings count (the controller's: ``ansible_playbook_python``), this prints one JSON object:

- ``extra_args``: pip arguments for the VM (``worker_pip_extra_args``): ``--cert <guest path>``
  and the http(s) ``index-url``, ``extra-index-url``, ``trusted-host`` and ``proxy``, ``timeout``,
  ``retries`` of this host, with 127.0.0.1/localhost turned into 10.0.2.2 (the host as QEMU's
  user network shows it to the guest);
- ``ca_bundle``: the CA bundle pip uses here (pip's ``cert``, else ``SSL_CERT_FILE`` /
  ``REQUESTS_CA_BUNDLE``, else Debian's bundle), to copy into the VM at the guest path;
- ``dropped``: settings that name this host's files (``find-links``, ``file://`` indexes) and
  cannot work in the VM; the VM goes without them.

Usage: pip_settings.py [--guest-cert /usr/local/share/testfleet-controller-ca.pem]
"""

import argparse
import ast
import json
import os
import shlex
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

GUEST_HOST = "10.0.2.2"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def pip_config():
    """``{(section, key): value}`` from ``pip config list`` (files and PIP_* variables merged)."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")).stdout
    values = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        if not sep:
            continue
        try:
            value = ast.literal_eval(raw)
        except (SyntaxError, ValueError):
            value = raw
        section, dummy, key = name.rpartition(".")
        values[(section, key)] = str(value)
    return values


def setting(values, key):
    """pip's precedence: a PIP_* variable, then the install section, then the global one."""
    for section in (":env:", "install", "global"):
        if (section, key) in values:
            return values[(section, key)]
    return None


def for_guest(url):
    """``url`` with a loopback host replaced by the host's address on QEMU's user network."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.hostname not in LOOPBACK:
        return url
    netloc = GUEST_HOST + (":%d" % parts.port if parts.port else "")
    if parts.username:
        netloc = parts.username + (":" + parts.password if parts.password else "") + "@" + netloc
    guest = urlunsplit(parts._replace(netloc=netloc))
    return guest if "://" in url else guest.split("://", 1)[1]


def settings(guest_cert):
    values = pip_config()
    args, dropped = ["--cert", guest_cert], []
    index = setting(values, "index-url")
    if index and index.startswith(("http://", "https://")):
        args += ["--index-url", for_guest(index)]
    elif index:
        dropped.append("index-url " + index)
    for url in (setting(values, "extra-index-url") or "").split():
        if url.startswith(("http://", "https://")):
            args += ["--extra-index-url", for_guest(url)]
        else:
            dropped.append("extra-index-url " + url)
    for host in (setting(values, "trusted-host") or "").split():
        args += ["--trusted-host", for_guest(host)]
    proxy = setting(values, "proxy") or os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
    if proxy:
        args += ["--proxy", for_guest(proxy)]
    for key in ("timeout", "retries"):
        value = setting(values, key) or (setting(values, "default-timeout") if key == "timeout" else None)
        if value:
            args += ["--" + key, value]
    for link in (setting(values, "find-links") or "").split():
        dropped.append("find-links " + link)
    if (setting(values, "no-index") or "").lower() in ("1", "true", "yes", "on"):
        dropped.append("no-index (the VM uses the index)")
    bundle = (setting(values, "cert") or os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
              or DEFAULT_BUNDLE)
    return {"extra_args": " ".join(shlex.quote(arg) for arg in args), "ca_bundle": bundle, "dropped": dropped}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guest-cert", default="/usr/local/share/testfleet-controller-ca.pem",
                        help="where the CA bundle is copied to in the VM")
    json.dump(settings(parser.parse_args().guest_cert), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
