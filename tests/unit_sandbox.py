# -*- test-case-name: tests.test_debian -*-
"""Run a systemd unit's ExecStart the way systemd would, on a machine without systemd.

There is no service manager here (nor on CI), so `sandbox_command` rebuilds what the unit asks
for from the unit file itself, with the kernel's own mechanisms:

- a private mount namespace (``unshare --mount``): ``ProtectSystem=strict`` (every mount
  read-only but the state and logs directories), ``ProtectHome``, ``PrivateTmp``,
  ``PrivateDevices`` (a fresh /dev with null, zero, full, random, urandom, tty, shm, pts),
  ``ProtectKernelTunables`` / ``ProtectControlGroups`` (/sys, /proc/sys read-only),
  ``ProtectKernelModules`` / ``ProtectKernelLogs`` (modules and kmsg hidden), ``ProtectProc``
  (a /proc with ``hidepid``), and a private UTS namespace for ``ProtectHostname``;
- ``User`` / ``Group``, ``NoNewPrivileges``, an empty ``CapabilityBoundingSet`` and
  ``AmbientCapabilities`` with setpriv(1); ``LimitNOFILE``, ``UMask``, ``WorkingDirectory``,
  ``Environment`` / ``EnvironmentFile`` and ``$NOTIFY_SOCKET`` (``Type=notify``);
- a seccomp filter (libseccomp's Python binding) built from this machine's systemd's own
  syscall groups (``systemd-analyze syscall-filter``) for ``SystemCallFilter`` with
  ``SystemCallErrorNumber``, ``SystemCallArchitectures=native``, and the argument rules systemd
  adds for ``MemoryDenyWriteExecute``, ``RestrictAddressFamilies``, ``RestrictNamespaces``,
  ``LockPersonality``, ``RestrictRealtime``, ``RestrictSUIDSGID``, ``ProtectClock``,
  ``ProtectHostname``, ``ProtectKernelModules`` and ``ProtectKernelLogs``.

`NOT_EMULATED` names what is left to systemd, and why; a directive in neither list makes
`sandbox_command` fail, so a new hardening line in the unit cannot go untried.
"""

from __future__ import annotations

import json
import pwd
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

from mcpd.config import read_env_file

SYSTEM_PYTHON = "/usr/bin/python3"
# systemd's environment for a system service, before Environment= and EnvironmentFile=.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

EMULATED = {
    "Type", "User", "Group", "Environment", "EnvironmentFile", "ExecStart", "WorkingDirectory",
    "StateDirectory", "StateDirectoryMode", "LogsDirectory", "LogsDirectoryMode", "UMask", "LimitNOFILE",
    "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem", "ProtectHome",
    "PrivateTmp", "PrivateMounts", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc", "RestrictAddressFamilies",
    "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute",
    "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber", "ProcSubset",
}  # fmt: skip
NOT_EMULATED = {
    "NotifyAccess": "who may notify: here only the main process has the socket anyway",
    "ExecReload": "the test sends SIGHUP itself, as /bin/kill -HUP $MAINPID would",
    "Restart": "restarting is the service manager's job",
    "RestartSec": "restarting is the service manager's job",
    "TimeoutStopSec": "the test bounds the stop itself",
    "RemoveIPC": "cleans up after the service stops; mcpd creates no System V IPC objects",
    "PrivateUsers": "a user namespace mapping only root and mcpd: mcpd needs no other identity",
    "MemoryMax": "a cgroup limit: no cgroups are delegated here",
    "TasksMax": "a cgroup limit: no cgroups are delegated here",
    "IPAddressDeny": "a cgroup BPF program: no cgroups are delegated here",
    "IPAddressAllow": "a cgroup BPF program: no cgroups are delegated here",
    "LogRateLimitIntervalSec": "journald's rate limit: there is no journal here",
    "LogRateLimitBurst": "journald's rate limit: there is no journal here",
}


class UnitError(Exception):
    """The unit has a directive this sandbox neither emulates nor knowingly leaves out."""


def parse_unit(*paths: Path) -> dict[str, list[str]]:
    """The ``[Service]`` directives of a unit file and its drop-ins, in that order: every
    assignment (an empty one resets a list, as systemd does)."""
    directives: dict[str, list[str]] = {}
    section = None
    lines = [line for path in paths for line in ["[]", *path.read_text(encoding="utf-8").splitlines()]]
    for raw in lines:
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section != "Service":
            continue
        name, _, value = line.partition("=")
        values = directives.setdefault(name.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return directives


def service_environment(directives: Mapping[str, list[str]], notify_socket: str | None) -> dict[str, str]:
    """The environment systemd gives the service: its own variables, then ``Environment=``,
    then each ``EnvironmentFile=`` (a leading ``-`` lets it be missing)."""
    user = single(directives, "User", "root")
    entry = pwd.getpwnam(user)
    env = {
        "PATH": BASE_PATH,
        "LANG": "C.UTF-8",
        "USER": user,
        "LOGNAME": user,
        "HOME": entry.pw_dir,
        "SHELL": entry.pw_shell,
    }
    if notify_socket:
        env["NOTIFY_SOCKET"] = notify_socket
    for line in directives.get("Environment", []):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            env[name] = value
    for name in directives.get("EnvironmentFile", []):
        optional = name.startswith("-")
        path = name.lstrip("-")
        if optional and not Path(path).exists():
            continue
        env.update(read_env_file(path))
    return env


def single(directives: Mapping[str, list[str]], name: str, default: str = "") -> str:
    values = directives.get(name, [])
    return values[-1] if values else default


def is_yes(directives: Mapping[str, list[str]], name: str) -> bool:
    return single(directives, name).lower() in ("yes", "true", "1", "on")


def syscall_groups() -> dict[str, list[str]]:
    """systemd's syscall groups on this machine (``systemd-analyze syscall-filter``)."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: Mapping[str, list[str]]) -> set[str]:
    """Syscall names, with groups expanded recursively."""
    found: set[str] = set()
    for name in names:
        if name.startswith("@"):
            found |= expand(groups[name], groups)
        else:
            found.add(name)
    return found


def seccomp_spec(directives: Mapping[str, list[str]]) -> dict[str, object]:
    """What the filter allows, unconditionally and under argument rules."""
    groups = syscall_groups()
    allowed: set[str] = set()
    denied: set[str] = set()
    for line in directives.get("SystemCallFilter", []):
        names = line.split()
        if names and names[0].startswith("~"):
            denied |= expand([names[0][1:], *names[1:]], groups)
        else:
            allowed |= expand(names, groups)
    # systemd always lets these through (systemd.exec(5), SystemCallFilter=).
    allowed |= expand(["@default"], groups) | {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn"}
    if is_yes(directives, "ProtectClock"):
        denied |= expand(["@clock"], groups)
    if is_yes(directives, "ProtectKernelModules"):
        denied |= expand(["@module"], groups)
    if is_yes(directives, "ProtectKernelLogs"):
        denied.add("syslog")
    if is_yes(directives, "ProtectHostname"):
        denied |= {"sethostname", "setdomainname"}
    return {
        "allow": sorted(allowed - denied),
        "errno": single(directives, "SystemCallErrorNumber", "EPERM"),
        "families": single(directives, "RestrictAddressFamilies").split(),
        "mdwe": is_yes(directives, "MemoryDenyWriteExecute"),
        "no_namespaces": is_yes(directives, "RestrictNamespaces"),
        "lock_personality": is_yes(directives, "LockPersonality"),
        "no_realtime": is_yes(directives, "RestrictRealtime"),
        "no_suid": is_yes(directives, "RestrictSUIDSGID"),
    }


# Runs as root inside the new mount namespace: the mounts, the limits, then setpriv.
_SETUP = r"""
import json, os, resource, subprocess, sys
spec = json.loads(sys.argv[1])
def mount(*args):
    subprocess.run(["mount", *args], check=True)
def mounts():
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]
for path in spec["writable"]:
    os.makedirs(path, exist_ok=True)
    mount("--bind", path, path)
if spec["protect_system"] == "strict":
    for target in mounts():
        keep = target in spec["writable"] or any(target == p or target.startswith(p + "/") for p in ("/proc", "/dev", "/sys"))
        if not keep:
            mount("-o", "remount,bind,ro", target)
if spec["proc"]:
    # A proc instance of its own: remounting would change the options of the machine's /proc.
    mount("-t", "proc", "-o", "nosuid,nodev,noexec," + spec["proc"], "proc", "/proc")
if spec["protect_tunables"]:
    for target in [m for m in mounts() if m == "/sys" or m.startswith("/sys/")] + ["/proc/sys"]:
        if not os.path.exists(target):
            continue  # ProcSubset=pid: no /proc/sys at all
        if target == "/proc/sys":
            mount("--bind", target, target)
        mount("-o", "remount,bind,ro", target)
for path in spec["inaccessible"]:
    if os.path.isdir(path):
        mount("-t", "tmpfs", "-o", "mode=000,ro", "tmpfs", path)
    elif os.path.exists(path):
        mount("--bind", "/dev/null", path)
for path in spec["private_tmp"]:
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", path)
if spec["private_devices"]:
    import stat
    mount("-t", "tmpfs", "-o", "mode=755,nosuid", "tmpfs", "/dev")
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)):
        os.mknod("/dev/" + name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, "/dev/" + name)
    os.mkdir("/dev/shm"); mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/dev/shm")
    os.mkdir("/dev/pts"); mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts", "/dev/pts")
if spec["nofile"]:
    resource.setrlimit(resource.RLIMIT_NOFILE, (spec["nofile"], spec["nofile"]))
os.execvp("setpriv", spec["setpriv"])
"""

# Runs as the service user, after setpriv: umask, working directory, the filter, then ExecStart.
_SECCOMP = r"""
import errno, json, os, socket, sys
import seccomp
spec = json.loads(sys.argv[1])
argv = sys.argv[2:]
os.umask(int(spec["umask"], 8))
os.chdir(spec["cwd"])
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, spec["errno"])))
def allow(name, *args):
    try:
        f.add_rule(seccomp.ALLOW, name, *args)
    except (RuntimeError, ValueError):
        pass  # not a syscall of this architecture
A = seccomp.Arg
conditional = set()
if spec["mdwe"]:
    PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
    conditional |= {"mmap", "mprotect", "pkey_mprotect", "shmat"}
    allow("mmap", A(2, seccomp.MASKED_EQ, PROT_EXEC, 0))
    allow("mmap", A(2, seccomp.MASKED_EQ, PROT_WRITE, 0))
    allow("mprotect", A(2, seccomp.MASKED_EQ, PROT_EXEC, 0))
    allow("pkey_mprotect", A(2, seccomp.MASKED_EQ, PROT_EXEC, 0))
    allow("shmat", A(2, seccomp.MASKED_EQ, SHM_EXEC, 0))
if spec["families"]:
    conditional.add("socket")
    for family in spec["families"]:
        allow("socket", A(0, seccomp.EQ, getattr(socket, family)))
if spec["no_namespaces"]:
    NS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080
    conditional |= {"clone", "unshare", "setns", "clone3"}
    allow("clone", A(0, seccomp.MASKED_EQ, NS, 0))
    allow("unshare", A(0, seccomp.MASKED_EQ, NS, 0))
    try:
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # as systemd: glibc falls back to clone
    except (RuntimeError, ValueError):
        pass
if spec["lock_personality"]:
    conditional.add("personality")
    allow("personality", A(0, seccomp.EQ, 0xFFFFFFFF))
    allow("personality", A(0, seccomp.EQ, 0))
if spec["no_realtime"]:
    conditional.add("sched_setscheduler")
    for policy in (0, 3, 5):  # SCHED_OTHER, SCHED_BATCH, SCHED_IDLE
        allow("sched_setscheduler", A(1, seccomp.EQ, policy))
if spec["no_suid"]:
    S = 0o6000
    conditional |= {"chmod", "fchmod", "fchmodat"}
    allow("chmod", A(1, seccomp.MASKED_EQ, S, 0))
    allow("fchmod", A(1, seccomp.MASKED_EQ, S, 0))
    allow("fchmodat", A(2, seccomp.MASKED_EQ, S, 0))
for name in spec["allow"]:
    if name not in conditional:
        allow(name)
f.load()
os.execv(argv[0], argv)
"""


def sandbox_command(
    unit: Path, drop_ins: tuple[Path, ...] = (), notify_socket: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``unit``'s ExecStart (with its drop-ins) as
    systemd would (as root: it sets up namespaces and mounts, then drops to the unit's user)."""
    directives = parse_unit(unit, *drop_ins)
    unknown = sorted(set(directives) - EMULATED - set(NOT_EMULATED))
    if unknown:
        raise UnitError(f"{unit}: not emulated and not knowingly left to systemd: {', '.join(unknown)}")
    user = single(directives, "User", "root")
    group = single(directives, "Group", user)
    state = [f"/var/lib/{name}" for line in directives.get("StateDirectory", []) for name in line.split()]
    logs = [f"/var/log/{name}" for line in directives.get("LogsDirectory", []) for name in line.split()]
    protect_home = single(directives, "ProtectHome", "no").lower()
    inaccessible = ["/home", "/root", "/run/user"] if protect_home in ("yes", "true", "read-only", "tmpfs") else []
    if is_yes(directives, "ProtectKernelModules"):
        inaccessible += ["/lib/modules", "/usr/lib/modules"]
    if is_yes(directives, "ProtectKernelLogs"):
        inaccessible += ["/proc/kmsg"]
    hidepid = {"invisible": "invisible", "noaccess": "noaccess", "ptraceable": "ptraceable"}.get(
        single(directives, "ProtectProc"), ""
    )
    subset = "pid" if single(directives, "ProcSubset") == "pid" else ""
    caps = "CapabilityBoundingSet" in directives and not directives["CapabilityBoundingSet"]
    ambient = directives.get("AmbientCapabilities", [])
    if ambient:
        raise UnitError(f"{unit}: AmbientCapabilities={' '.join(ambient)} is not emulated")
    exec_start = shlex.split(single(directives, "ExecStart"))
    filter_spec = seccomp_spec(directives)
    filter_spec.update(umask=single(directives, "UMask", "0022"), cwd=single(directives, "WorkingDirectory", "/"))
    setpriv = [
        "setpriv",
        f"--reuid={user}",
        f"--regid={group}",
        "--init-groups",
        "--inh-caps=-all",
        *(["--bounding-set=-all"] if caps else []),
        *(["--no-new-privs"] if is_yes(directives, "NoNewPrivileges") else []),
        "--",
        SYSTEM_PYTHON,
        "-c",
        _SECCOMP,
        json.dumps(filter_spec),
        *exec_start,
    ]
    setup = {
        "writable": state + logs,
        "protect_system": single(directives, "ProtectSystem", "no"),
        "protect_tunables": is_yes(directives, "ProtectKernelTunables") or is_yes(directives, "ProtectControlGroups"),
        "inaccessible": inaccessible,
        "private_tmp": ["/tmp", "/var/tmp"] if is_yes(directives, "PrivateTmp") else [],
        "private_devices": is_yes(directives, "PrivateDevices"),
        "proc": ",".join(
            option for option in (hidepid and f"hidepid={hidepid}", subset and f"subset={subset}") if option
        ),
        "nofile": int(single(directives, "LimitNOFILE", "0")),
        "setpriv": setpriv,
    }
    namespaces = ["--mount", "--propagation", "private"]
    if is_yes(directives, "ProtectHostname"):
        namespaces.append("--uts")
    command = ["unshare", *namespaces, "--", SYSTEM_PYTHON, "-c", _SETUP, json.dumps(setup)]
    return command, service_environment(directives, notify_socket)
