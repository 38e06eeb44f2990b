"""The PoT sandbox's seccomp filter: a classic-BPF program that refuses system calls no math program needs."""
from __future__ import annotations

import errno
import platform
import struct

# Syscall numbers per architecture: x86_64 from asm/unistd_64.h, aarch64 from asm-generic/unistd.h
# (tests/test_sandbox.py checks both against the headers where they are installed). Denied: the network
# (the namespace has no route out; this also shuts the socket families' kernel code), another process's
# memory, the kernel keyring (not namespaced: the user's keys), and interfaces that are the usual way into
# kernel bugs (bpf, perf, userfaultfd, io_uring, mounts, namespaces, modules). SysV IPC too: a shared memory
# segment outlives its process (detached, it belongs to no one) and counts against no rlimit, so a program
# could leave the host short of memory; a math program needs none of it, nor a socketpair.
DENIED = {
    "socket": (41, 198), "socketpair": (53, 199), "ptrace": (101, 117), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "unshare": (272, 97), "setns": (308, 268),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225),
    "acct": (163, 89), "syslog": (103, 116), "quotactl": (179, 60), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "open_tree": (428, 428), "move_mount": (429, 429), "mount_setattr": (442, 442),
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "shmdt": (67, 197),
    "msgget": (68, 186), "msgsnd": (69, 189), "msgrcv": (70, 188), "msgctl": (71, 187),
    "semget": (64, 190), "semop": (65, 193), "semtimedop": (220, 192), "semctl": (66, 191),
}
# AUDIT_ARCH_* values (linux/audit.h) and the column of DENIED for each machine name.
ARCHES = {"x86_64": (0xC000003E, 0), "amd64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1), "arm64": (0xC00000B7, 1)}
_X32_SYSCALL_BIT = 0x40000000  # x86_64's x32 ABI: the same calls under other numbers; refused as a whole

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_KILL_PROCESS, _RET_ALLOW, _RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_NR_OFFSET, _ARCH_OFFSET = 0, 4  # struct seccomp_data: int nr; __u32 arch; ...


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter for `machine` (default: this one) as bwrap's --seccomp reads it, or None where we have no
    syscall table. A call from another architecture's ABI kills the process; a denied call fails with EPERM."""
    arch = ARCHES.get((machine or platform.machine()).lower())
    if arch is None:
        return None
    audit_arch, column = arch
    numbers = sorted({nrs[column] for nrs in DENIED.values()})
    head = [_insn(_LD_W_ABS, _ARCH_OFFSET), _insn(_JEQ_K, audit_arch, jt=1), _insn(_RET_K, _RET_KILL_PROCESS),
            _insn(_LD_W_ABS, _NR_OFFSET)]
    checks = [(_JGE_K, _X32_SYSCALL_BIT)] if column == 0 else []
    checks += [(_JEQ_K, nr) for nr in numbers]
    # Each check jumps over the checks after it and the ALLOW to reach the final ERRNO return.
    body = [_insn(code, k, jt=len(checks) - i) for i, (code, k) in enumerate(checks)]
    tail = [_insn(_RET_K, _RET_ALLOW), _insn(_RET_K, _RET_ERRNO | errno.EPERM)]
    return b"".join(head + body + tail)
