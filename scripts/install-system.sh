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
#    which the helper unit gives the helper as --peer-uid).
#
#   scripts/install-system.sh [--prefix DIR] [--service-user NAME] [--helper-user NAME]
#
# --prefix DIR writes everything under DIR instead of / (DIR/etc/passwd and friends must
# exist there: useradd --prefix), for packaging and for the tests.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=""
service_user=sepconnect
helper_user=sepconnect-helper
worker_user=sepconnect-worker  # fixed: launcher/spawner_start.py WORKER_ACCOUNT
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
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
