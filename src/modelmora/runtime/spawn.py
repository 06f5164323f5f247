"""How a worker's child process starts: its command, its environment, the thread it comes from.

:func:`spawn_child` execs ``python -m modelmora.runtime._child`` (never a bare fork) in a session
of its own, with one end of a socket pair as its channel, and opens its pidfd, which
:class:`~modelmora.runtime.worker.Worker` waits on together with the socket. What is fixed when
the process starts (the numeric libraries' thread caps, the extra environment) is also what a
spare must share with the worker it becomes: :data:`SpareKey`.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import IO, Any

from modelmora.runtime.memory import nvml_available

__all__ = [
    "OMP_WAIT_POLICY",
    "THREAD_ENV_VARS",
    "SpareKey",
    "server_env",
    "spare_key",
    "spawn_child",
]

#: Environment variables that cap the thread pools of the usual numeric libraries.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "MODELMORA_THREADS",
)

#: OpenMP's idle policy in a model server's workers unless its environment sets one. By
#: default OpenMP threads spin at every barrier; torch's intra-op threads then take the cores
#: the server's event loop needs (one MiniLM sentence on a busy 2-core machine: 208 ms of CPU
#: spinning instead of 16 ms). Passive threads sleep between parallel regions. Not for a
#: batch's stage workers, which have the machine to themselves: there passive threads cost
#: Whisper base 38 % more wall time (CTranslate2's OpenMP threads wake up late).
OMP_WAIT_POLICY = "PASSIVE"


def server_env() -> dict[str, str]:
    """Extra environment of a model server's workers (the idle policy above, unless set)."""
    return {} if "OMP_WAIT_POLICY" in os.environ else {"OMP_WAIT_POLICY": OMP_WAIT_POLICY}


#: What a spare shares with the workers it can become: adapter kind, threads, extra env.
SpareKey = tuple[str, int | None, tuple[tuple[str, str], ...]]


def spare_key(kind: str, threads: int | None = None, env: dict[str, str] | None = None) -> SpareKey:
    """The :data:`SpareKey` of workers of adapter ``kind`` with these threads and env."""
    return (kind, threads, tuple(sorted((env or {}).items())))


# PR_SET_PDEATHSIG fires when the *thread* that spawned the child ends, so children are
# spawned from a thread that lives as long as the process (or from the main thread).
_spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="modelmora-spawn")


def spawn_child(
    threads: int | None, env: dict[str, str], stderr: IO[Any] | None
) -> tuple[subprocess.Popen[bytes], Connection, int | None]:
    """Start a worker child; it waits for its first message (prepare or load) on the channel.

    Args:
        threads: cap on its numeric thread pools (None: the libraries' defaults).
        env: extra environment variables, over ours and the caps.
        stderr: where its stderr goes (None inherits ours).

    Returns:
        The process, our end of its channel, and its pidfd (None on a kernel without
        ``pidfd_open``: the channel's EOF is then the only sign of its death).
    """
    parent_end, child_end = socket.socketpair()
    child_env = dict(os.environ)
    if threads:
        child_env.update({var: str(threads) for var in THREAD_ENV_VARS})
    if nvml_available():
        child_env["MODELMORA_NVML"] = "1"
    child_env.update(env)
    argv = [
        sys.executable,
        "-m",
        "modelmora.runtime._child",
        str(child_end.fileno()),
        str(os.getpid()),
    ]

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            pass_fds=(child_end.fileno(),),
            start_new_session=True,  # own process group: killpg reaches its descendants
            stdin=subprocess.DEVNULL,
            stderr=stderr,
            env=child_env,
        )

    try:
        if threading.current_thread() is threading.main_thread():
            proc = popen()
        else:
            proc = _spawner.submit(popen).result()
    finally:
        child_end.close()
    conn = Connection(os.dup(parent_end.fileno()))
    parent_end.close()
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # old kernel: the socket's EOF is the sentinel
        pidfd = None
    return proc, conn, pidfd
