#!/usr/bin/env bash
# The system side of installing sepconnect (run as root, once; idempotent):
#
#  - three system accounts: the service account (the supervisor), the workers'
#    (`sepconnect-worker`: the worker spawner and the workers) and the helper's own (the
#    helper runs as it, with CAP_NET_ADMIN alone): `sepconnect` and `sepconnect-helper`
#    unless named otherwise;
#  - the polkit rule that lets the helper's account change link DNS settings in
#    systemd-resolved, and nothing else (polkit/50-sepconnect-helper.rules.in);
#  - /etc/sepconnect/helper.env for the split systemd units (the service account's uid,
#    which the helper unit gives the helper as --peer-uid);
#  - the programs where the units expect them: /usr/bin/sepconnect and its five helper
#    programs, each a symbolic link to the venv's entry point (--venv, default
#    /opt/sepconnect-venv: where selinux/sepconnect.fc labels them; executing the link
#    executes the labelled file, and the launcher finds the others next to its
#    interpreter, in the venv's bin/);
#  - /etc/sepconnect (0755, for NAME.conf and NAME.cred), /var/log/sepconnect (0700, the
#    all-in-one unit's logs), the units in /etc/systemd/system and the docs they name in
#    /usr/share/doc/sepconnect.
#
#   scripts/install-system.sh [--prefix DIR] [--venv DIR] [--service-user NAME]
#                             [--helper-user NAME]
#
# --prefix DIR writes everything under DIR instead of / (DIR/etc/passwd and friends must
# exist there: useradd --prefix), for packaging and for the tests.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=""
venv=/opt/sepconnect-venv
service_user=sepconnect
helper_user=sepconnect-helper
worker_user=sepconnect-worker  # fixed: process/accounts.py WORKER_ACCOUNT
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    --service-user) service_user=$2; shift 2 ;;
    --helper-user) helper_user=$2; shift 2 ;;
    *) echo "install-system: unknown argument $1" >&2; exit 2 ;;
  esac
done
for name in "$service_user" "$helper_user"; do
  if ! [[ $name =~ ^[a-z_][a-z0-9_-]{0,31}$ ]]; then
    echo "install-system: $name: not a valid account name" >&2
    exit 2
  fi
done
if [ "$service_user" = "$helper_user" ]; then
  echo "install-system: the helper needs an account of its own" >&2
  exit 2
fi
for name in "$service_user" "$helper_user"; do
  if [ "$name" = "$worker_user" ]; then
    echo "install-system: $worker_user is the workers' account" >&2
    exit 2
  fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system: run as root" >&2
  exit 2
fi
# The programs sepconnect runs, each an entry point of pyproject.toml.
programs=(sepconnect sepconnect-privhelper sepconnect-privhelper-serve sepconnect-spawner sepconnect-worker
  sepconnect-rootrunner sepconnect-nft-runner)
if [[ $venv != /* ]]; then
  echo "install-system: --venv $venv: an absolute path" >&2
  exit 2
fi
for program in "${programs[@]}"; do
  if [ ! -x "$venv/bin/$program" ]; then
    echo "install-system: $venv/bin/$program is missing: install sepconnect into $venv first" \
      "(SEPCONNECT_VENV=$venv scripts/bootstrap.sh)" >&2
    exit 2
  fi
  if [ -e "$prefix/usr/bin/$program" ] && [ ! -L "$prefix/usr/bin/$program" ]; then
    echo "install-system: $prefix/usr/bin/$program exists and is not our link; not replaced" >&2
    exit 2
  fi
done

prefix_args=()
if [ -n "$prefix" ]; then prefix_args=(--prefix "$prefix"); fi

# The account's uid from the passwd file it is in (getent does not read a prefix).
uid_of() { awk -F: -v u="$1" '$1 == u { print $3 }' "$prefix/etc/passwd"; }

for name in "$service_user" "$worker_user" "$helper_user"; do
  if [ -z "$(uid_of "$name")" ]; then
    useradd "${prefix_args[@]}" --system --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin "$name"
    echo "install-system: created the system account $name (uid $(uid_of "$name"))"
  fi
done

rules="$prefix/etc/polkit-1/rules.d"
install -d -m 0755 "$rules"
sed "s/@HELPER_USER@/$helper_user/g" "$here/polkit/50-sepconnect-helper.rules.in" \
  > "$rules/50-sepconnect-helper.rules.tmp"
chmod 0644 "$rules/50-sepconnect-helper.rules.tmp"
mv "$rules/50-sepconnect-helper.rules.tmp" "$rules/50-sepconnect-helper.rules"
echo "install-system: polkit rule $rules/50-sepconnect-helper.rules (for $helper_user)"

install -d -m 0755 "$prefix/etc/sepconnect"
printf 'SEPCONNECT_UID=%s\n' "$(uid_of "$service_user")" > "$prefix/etc/sepconnect/helper.env"
echo "install-system: $prefix/etc/sepconnect/helper.env"

install -d -m 0755 "$prefix/usr/bin"
for program in "${programs[@]}"; do
  ln -sfn "$venv/bin/$program" "$prefix/usr/bin/$program"
done
echo "install-system: $prefix/usr/bin/sepconnect* -> $venv/bin/"
if [ "$venv" != /opt/sepconnect-venv ]; then
  echo "install-system: note: selinux/sepconnect.fc labels /opt/sepconnect-venv/bin; with" \
    "SELinux, give $venv/bin the same file contexts (semanage fcontext)"
fi
install -d -m 0700 "$prefix/var/log/sepconnect"
install -d -m 0755 "$prefix/etc/systemd/system" "$prefix/usr/share/doc/sepconnect"
install -m 0644 "$here"/systemd/*.service "$here"/systemd/*.socket "$prefix/etc/systemd/system/"
install -m 0644 "$here"/docs/*.md "$prefix/usr/share/doc/sepconnect/"
echo "install-system: the units in $prefix/etc/systemd/system"
install -d -m 0755 "$prefix/etc/tmpfiles.d"
install -m 0644 "$here/systemd/sepconnect.tmpfiles" "$prefix/etc/tmpfiles.d/sepconnect.conf"
echo "install-system: $prefix/etc/tmpfiles.d/sepconnect.conf (/run/sepconnect at boot)"
if [ -z "$prefix" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemd-tmpfiles --create /etc/tmpfiles.d/sepconnect.conf
fi
