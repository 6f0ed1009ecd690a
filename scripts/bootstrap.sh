#!/usr/bin/env bash
# Install what sepconnect, its tests and its demo need on a Debian machine (run as root):
# the Debian packages, then a venv with sepconnect installed (non-editable, as in production).
# Idempotent and quick when everything is already there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SEPCONNECT_VENV:-/opt/sepconnect-venv}

# ocserv is the real server of the test lab; openconnect the reference client;
# openssl: the reference for --servercert pins in the tests (tests/lab.py);
# python3-venv because the worker runs as an unprivileged user and needs an
# interpreter it can read (Debian's, not a root-only one under /root).
# libseccomp2: the sandboxes' filters (ctypes); the SELinux toolchain builds and checks
# selinux/ (tests/unit/test_selinux.py); systemd for systemd-analyze (tests/unit/test_systemd.py).
packages=(python3 python3-venv ocserv openconnect iperf3 gnutls-bin openssl iproute2 nftables iputils-ping procps
  libseccomp2 make selinux-policy-dev checkpolicy semodule-utils selinux-policy-default setools
  policycoreutils systemd
  vpnc-scripts dbus-daemon polkitd util-linux passwd acl strace softhsm2 opensc \
  libengine-pkcs11-openssl)
# vpnc-scripts: the real Debian vpnc-script for --script tests; dbus-daemon and polkitd:
# a private system bus with polkit for the systemd-resolved DNS test; util-linux:
# unshare/nsenter/setpriv; passwd: useradd --prefix for scripts/install-system.sh; acl:
# setfacl, to give a credential file the ACL systemd >= 254 gives LoadCredential= files;
# strace: which modules the privileged processes load (tests/integration/test_code_budget.py).
# softhsm2 (a PKCS#11 token in files), opensc (pkcs11-tool) and libengine-pkcs11-openssl: the
# test that shows why a key in a token cannot reach our TLS library (docs/usage.md).

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: run as root (it installs Debian packages and creates $venv)" >&2
  exit 2
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts ocserv as a system service on install; the lab runs its own instances only.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet ocserv 2>/dev/null; then
  systemctl disable --now ocserv >/dev/null 2>&1 || true
fi

# systemd-resolved for the DNS tests, unpacked but NOT installed: installing it would
# take over this machine's /etc/resolv.conf. The tests run it inside a private mount
# and network namespace with a D-Bus system bus of their own.
resolved_dir=${SEPCONNECT_TEST_RESOLVED:-/opt/sepconnect-test/systemd-resolved}
if [ ! -x "$resolved_dir/lib/systemd/systemd-resolved" ]; then
  echo "bootstrap: unpacking systemd-resolved into $resolved_dir (not installed)"
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download -qq systemd-resolved >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get download -qq systemd-resolved >/dev/null; }; })
  mkdir -p "$resolved_dir"
  dpkg-deb -x "$tmp"/systemd-resolved_*.deb "$resolved_dir"
  rm -rf "$tmp"
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip setuptools
fi
"$venv/bin/pip" install -q --disable-pip-version-check "$here[test,lint]"
# Reinstall our own code every time: the processes run from the installed copy.
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$here"
