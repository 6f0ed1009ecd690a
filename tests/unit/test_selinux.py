"""The SELinux module (selinux/): it compiles with the refpolicy devel Makefile, links
into the Debian default policy in a scratch policy store with expand-check on (so
every ``neverallow`` is enforced), and the linked policy says what docs/security.md
says, checked with sesearch. SELinux cannot be enabled on the build machines, so this
is static: no AVC is ever exercised here (docs/security.md, "SELinux").

Needs Debian's selinux-policy-dev, selinux-policy-default, semodule-utils and setools
(scripts/bootstrap.sh installs them). About 20 s: two links of the full policy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEVEL_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")
TOOLS = ("make", "checkmodule", "semodule", "sesearch", "seinfo")

# Linking copies the system policy store, which only root may read.
pytestmark = [pytest.mark.slow, pytest.mark.root]


def _missing() -> list[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not DEVEL_MAKEFILE.exists():
        missing.append(str(DEVEL_MAKEFILE))
    if not Path("/var/lib/selinux/default").is_dir():
        missing.append("/var/lib/selinux/default (selinux-policy-default)")
    return missing


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"SELinux toolchain missing in CI: {missing} (scripts/bootstrap.sh)")
        pytest.skip(f"SELinux toolchain missing: {missing}")


def run(
    *argv: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=check, timeout=300)


def build(src: Path, name: str) -> Path:
    result = run("make", "-f", str(DEVEL_MAKEFILE), f"{name}.pp", cwd=src, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    return src / f"{name}.pp"


def scratch_store(tmp: Path) -> Path:
    """A copy of the installed policy store whose semanage.conf has expand-check=1."""
    root = tmp / "altroot"
    (root / "var/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copytree("/var/lib/selinux", root / "var/lib/selinux", symlinks=True)
    shutil.copytree("/etc/selinux", root / "etc/selinux", symlinks=True)
    conf = root / "etc/selinux/semanage.conf"
    lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith("expand-check")]
    conf.write_text("\n".join([*lines, "expand-check=1", ""]))
    return root


def link(root: Path, *packages: Path) -> subprocess.CompletedProcess[str]:
    argv = ["semodule", "-p", str(root), "-s", "default", "-n"]
    for pp in packages:
        argv += ["-i", str(pp)]
    return run(*argv, check=False)


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("selinux")
    for f in (ROOT / "selinux").glob("sepconnect.*"):
        if f.suffix in (".te", ".fc", ".if"):
            shutil.copy(f, src)
    return build(src, "sepconnect")


@pytest.fixture(scope="module")
def policy(module: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = scratch_store(tmp_path_factory.mktemp("store"))
    result = link(root, module)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = (root / "etc/selinux/default/policy").glob("policy.*")
    yield str(path)
    shutil.rmtree(root, ignore_errors=True)


_RULE = re.compile(r"^allow (\S+) (\S+):(\S+) (?:\{ ([^}]*) \}|(\S+));")
_CACHE: dict[tuple[str, str], list[tuple[str, str, str, frozenset[str]]]] = {}


def allow_rules(policy: str, source: str) -> list[tuple[str, str, str, frozenset[str]]]:
    """Every allow rule that applies to ``source`` (directly or through an attribute):
    one sesearch run per domain, parsed here (each run loads the whole policy)."""
    key = (policy, source)
    if key not in _CACHE:
        parsed = []
        for line in run("sesearch", policy, "-A", "-s", source).stdout.splitlines():
            m = _RULE.match(line.strip())
            if m:
                perms = frozenset((m.group(4) or m.group(5)).split())
                parsed.append((m.group(1), m.group(2), m.group(3), perms))
        _CACHE[key] = parsed
    return _CACHE[key]


def sesearch(
    policy: str,
    source: str,
    *,
    cls: str | None = None,
    perm: str | None = None,
    target: str | None = None,
) -> list[str]:
    """Like ``sesearch -A -s SOURCE [-t TARGET] [-c CLS] [-p PERM]`` (target matched
    exactly, so attribute targets are not expanded: enough for these assertions)."""
    found = []
    for src, tgt, c, perms in allow_rules(policy, source):
        if cls is not None and c != cls:
            continue
        if perm is not None and perm not in perms:
            continue
        if target is not None and tgt != target:
            continue
        found.append(f"allow {src} {tgt}:{c} {{ {' '.join(sorted(perms))} }};")
    return found


def own(rules: list[str], source: str) -> list[str]:
    """Rules written for ``source`` itself (not for an attribute it belongs to)."""
    return [r for r in rules if r.split()[1] == source]


# --------------------------------------------------------------------------- building


def test_module_links_with_neverallow_checks_on(policy: str) -> None:
    types = run("seinfo", policy, "-t").stdout
    for t in (
        "sepconnect_t",
        "sepconnect_helper_t",
        "sepconnect_spawner_t",
        "sepconnect_worker_t",
        "sepconnect_exec_t",
        "sepconnect_helper_exec_t",
        "sepconnect_spawner_exec_t",
        "sepconnect_worker_exec_t",
        "sepconnect_nft_t",
        "sepconnect_rootrunner_t",
        "sepconnect_helper_runtime_t",
        "sepconnect_log_t",
    ):
        assert f"   {t}\n" in types or f" {t}" in types, t


def test_a_module_breaking_an_invariant_does_not_link(module: Path, tmp_path: Path) -> None:
    """The neverallow rules are enforced: granting the worker net_admin fails to link."""
    (tmp_path / "sepcviolation.te").write_text(
        "policy_module(sepcviolation, 1.0)\n"
        "gen_require(`type sepconnect_worker_t;')\n"
        "allow sepconnect_worker_t self:capability net_admin;\n"
    )
    (tmp_path / "sepcviolation.fc").write_text("")
    (tmp_path / "sepcviolation.if").write_text("")
    bad = build(tmp_path, "sepcviolation")
    root = scratch_store(tmp_path)
    result = link(root, module, bad)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "neverallow check failed" in output, output
    assert "sepconnect_worker_t" in output


# --------------------------------------------------------------------------- what it says


def test_domain_transitions(policy: str) -> None:
    transitions = set(run("sesearch", policy, "-T", "-c", "process").stdout.splitlines())
    for rule in (
        "type_transition init_t sepconnect_exec_t:process sepconnect_t;",
        "type_transition init_t sepconnect_helper_exec_t:process sepconnect_helper_t;",
        "type_transition sepconnect_t sepconnect_helper_exec_t:process sepconnect_helper_t;",
        "type_transition sepconnect_helper_t sepconnect_nft_exec_t:process sepconnect_nft_t;",
        "type_transition sepconnect_helper_t sepconnect_rootrunner_exec_t:process "
        "sepconnect_rootrunner_t;",
        "type_transition init_t sepconnect_spawner_exec_t:process sepconnect_spawner_t;",
        "type_transition sepconnect_t sepconnect_spawner_exec_t:process sepconnect_spawner_t;",
        "type_transition sepconnect_spawner_t sepconnect_worker_exec_t:process"
        " sepconnect_worker_t;",
    ):
        assert rule in transitions, rule
    # The worker transitions nowhere; only the spawner starts it.
    assert not run("sesearch", policy, "-T", "-s", "sepconnect_worker_t").stdout.strip()
    into_worker = [t for t in transitions if t.endswith(" sepconnect_worker_t;")]
    assert into_worker == [
        "type_transition sepconnect_spawner_t sepconnect_worker_exec_t:process sepconnect_worker_t;"
    ]


def test_only_the_spawner_starts_or_signals_the_worker(policy: str) -> None:
    """Issue 13, item 2: the worker has its own uid, which the supervisor cannot signal;
    the policy says the same of the domains. The spawner has no capability and no
    network; the worker cannot connect to the helper's sockets."""
    for domain in ("sepconnect_t", "sepconnect_helper_t"):
        for perm in ("transition", "signal", "sigkill"):
            rules = sesearch(policy, domain, target="sepconnect_worker_t", cls="process", perm=perm)
            assert rules == [], (domain, perm, rules)
    spawner = sesearch(policy, "sepconnect_spawner_t", target="sepconnect_worker_t", cls="process")
    assert any("sigkill" in r for r in spawner), spawner
    for cls in ("capability", "capability2", "cap_userns"):
        assert sesearch(policy, "sepconnect_spawner_t", cls=cls) == []
    for cls in ("tcp_socket", "udp_socket", "netlink_route_socket", "tun_socket"):
        assert sesearch(policy, "sepconnect_spawner_t", cls=cls, perm="create") == []
    assert (
        sesearch(policy, "sepconnect_worker_t", target="sepconnect_helper_t", perm="connectto")
        == []
    )


def test_only_the_helper_and_its_nft_runner_have_net_admin(policy: str) -> None:
    helper = own(
        sesearch(policy, "sepconnect_helper_t", cls="capability"),
        "sepconnect_helper_t",
    )
    assert helper == [
        "allow sepconnect_helper_t sepconnect_helper_t:capability "
        "{ chown net_admin setgid setpcap setuid };"
    ]
    nft = own(sesearch(policy, "sepconnect_nft_t", cls="capability"), "sepconnect_nft_t")
    assert nft == ["allow sepconnect_nft_t sepconnect_nft_t:capability { net_admin };"]
    supervisor = sesearch(policy, "sepconnect_t", cls="capability", perm="net_admin")
    assert supervisor == []
    for cls in ("capability", "capability2", "cap_userns"):
        assert sesearch(policy, "sepconnect_worker_t", cls=cls, perm="create") == []


def test_only_the_helper_creates_a_tun_or_writes_routes(policy: str) -> None:
    assert own(
        sesearch(policy, "sepconnect_helper_t", cls="tun_socket", perm="create"),
        "sepconnect_helper_t",
    )
    assert own(
        sesearch(policy, "sepconnect_helper_t", cls="netlink_route_socket", perm="nlmsg_write"),
        "sepconnect_helper_t",
    )
    for domain in ("sepconnect_t", "sepconnect_worker_t"):
        assert sesearch(policy, domain, cls="tun_socket", perm="create") == []
        assert sesearch(policy, domain, cls="netlink_route_socket", perm="nlmsg_write") == []
        assert (
            sesearch(policy, domain, target="tun_tap_device_t", cls="chr_file", perm="open") == []
        )
    assert sesearch(policy, "sepconnect_worker_t", cls="netlink_route_socket") == []
    # The supervisor reads the routing table for its conflict records, and only reads.
    assert own(
        sesearch(policy, "sepconnect_t", cls="netlink_route_socket", perm="nlmsg_read"),
        "sepconnect_t",
    )


def test_worker_uses_the_handed_tun_and_its_own_sockets_only(policy: str) -> None:
    tun = sesearch(policy, "sepconnect_worker_t", target="tun_tap_device_t", cls="chr_file")
    assert tun == [
        "allow sepconnect_worker_t tun_tap_device_t:chr_file { getattr ioctl read write };"
    ]
    fds = sesearch(policy, "sepconnect_worker_t", cls="fd", perm="use")
    assert "allow sepconnect_worker_t sepconnect_helper_t:fd { use };" in fds
    for cls in ("packet_socket", "rawip_socket", "netlink_socket", "netlink_route_socket"):
        assert sesearch(policy, "sepconnect_worker_t", cls=cls, perm="create") == []


def test_helper_runners_spawner_and_worker_execute_nothing(policy: str) -> None:
    # The helper's start stage executes its serving stage: its own programs, no other.
    assert own(
        sesearch(policy, "sepconnect_helper_t", cls="file", perm="execute_no_trans"),
        "sepconnect_helper_t",
    ) == [
        "allow sepconnect_helper_t sepconnect_helper_exec_t:file "
        "{ entrypoint execute execute_no_trans getattr ioctl lock map open read };"
    ]
    for domain in (
        "sepconnect_nft_t",
        "sepconnect_spawner_t",
        "sepconnect_worker_t",
    ):
        assert sesearch(policy, domain, cls="file", perm="execute_no_trans") == []


def test_only_the_root_runner_writes_resolv_conf(policy: str) -> None:
    """Issue 13, F6: /etc/resolv.conf (net_conf_t) is the opt-in root runner's."""
    others = ("sepconnect_t", "sepconnect_helper_t", "sepconnect_nft_t", "sepconnect_worker_t")
    for domain in others:
        assert sesearch(policy, domain, target="net_conf_t", cls="file", perm="write") == []
    assert sesearch(
        policy, "sepconnect_rootrunner_t", target="net_conf_t", cls="file", perm="write"
    )


def test_worker_writes_no_file(policy: str) -> None:
    writes = sesearch(policy, "sepconnect_worker_t", cls="file", perm="write")
    # /proc/self (its own process's files) is the only file class rule with write.
    assert all(
        r.startswith("allow sepconnect_worker_t sepconnect_worker_t:file") for r in writes
    ), writes
    assert sesearch(policy, "sepconnect_worker_t", cls="dir", perm="add_name") == []


def test_nobody_of_ours_writes_etc(policy: str) -> None:
    for domain in ("sepconnect_t", "sepconnect_helper_t", "sepconnect_worker_t"):
        assert sesearch(policy, domain, target="etc_t", cls="file", perm="write") == [], domain


def test_helper_appends_to_the_audit_log(policy: str) -> None:
    rules = sesearch(policy, "sepconnect_helper_t", target="sepconnect_log_t", cls="file")
    assert rules == [
        "allow sepconnect_helper_t sepconnect_log_t:file { append create getattr open };"
    ]
    assert sesearch(policy, "sepconnect_worker_t", target="sepconnect_log_t") == []
