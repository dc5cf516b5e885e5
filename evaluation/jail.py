"""Runs ONE untrusted program inside the namespaces evaluation/sandbox.py started (not imported by anything).

Started as `unshare --net --mount --pid --ipc --uts --fork --kill-child -- python -I -S evaluation/jail.py FD`,
so this process is PID 1 of a fresh PID namespace, alone in an empty network namespace (no interface up, not
even loopback) and holding a private copy of the mount table. First it writes its PID as the host sees it to
file descriptor FD (sandbox.py then holds a pidfd on it: killing PID 1 of a PID namespace kills every process in
the namespace, including ones that called setsid() or double-forked, and it moves this process into the
program's cgroup). It reads its job as JSON on stdin, then:
  1. makes every mount private (nothing it mounts propagates to the host) and re-mounts each one read-only
     (per-mount flags of this namespace's copies; the host's mounts stay read-write);
  2. mounts a size-limited tmpfs on /tmp owned by uid 65534 (the only writable place: it lives in this
     namespace's memory and vanishes with it, so nothing written reaches the host's disks), empty read-only
     tmpfs over /var/tmp, /dev/shm, /run and every path in "hide" (the run directory, the evaluator's home;
     the interpreter's prefix, "keep", is bound back read-only when it lies under one of them),
     and a /proc of the new PID namespace (no other process, no other process's environment, is visible);
  3. drops to uid/gid 65534 (nobody) with no supplementary groups and no_new_privs (setuid binaries inert),
     sets RLIMIT_AS (memory; not for managed runtimes, see languages.py), RLIMIT_CPU, RLIMIT_FSIZE and,
     when no cgroup bounds the program, RLIMIT_NPROC, and runs the program in /tmp: Python in this interpreter, other languages as the job's
     compile and run commands, one after the other, on the source file it writes there.
The environment is already empty apart from PATH/HOME/TMPDIR/LANG: sandbox.py starts unshare with that alone.
Exit codes: 0 and the nonce on stdout = the program finished; 1 AssertionError or a run command that failed;
2 other exception; 3 MemoryError (a Python allocation refused by RLIMIT_AS); 4 the compile command failed;
128 + N a command killed by signal N; 70 the sandbox itself could not be set up.
"""
import ctypes
import json
import os
import resource
import subprocess
import sys
import traceback

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
              "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
NOBODY = 65534
PR_SET_NO_NEW_PRIVS = 38
RUN_FAILED, COMPILE_FAILED, SETUP_FAILED = 1, 4, 70

libc = ctypes.CDLL(None, use_errno=True)


def mount(source, target, fstype, flags, data=None):
    encode = lambda value: value.encode() if isinstance(value, str) else value  # noqa: E731
    if libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {source} on {target}: {os.strerror(error)}")


def mount_points():
    """(mount point, kept per-mount flags) from /proc/self/mountinfo, parents before children."""
    points = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # spaces are written as \040
            flags = sum(KEPT_FLAGS.get(option, 0) for option in fields[5].split(","))
            points.append((point, flags))
    return points


def hide(path, kept):
    """An empty read-only tmpfs over `path`, with the `kept` directories under it bound back (read-only):
    the interpreter's own prefix may live in the hidden home (pyenv, uv)."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("tmpfs", path, "tmpfs", flags, "size=64k,mode=0555")
    for keep, fd in kept.items():
        os.makedirs(keep, mode=0o555)
        mount(f"/proc/self/fd/{fd}", keep, None, MS_BIND | MS_REC)
        mount(None, keep, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    mount(None, path, None, MS_REMOUNT | MS_RDONLY | flags, "size=64k,mode=0555")


def confine(job):
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for point, flags in mount_points():
        try:
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError:
            if os.path.exists(point):  # a mount hidden under another one cannot be reached, nor remounted
                raise
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={job['tmp_bytes']},mode=0700,uid={NOBODY},gid={NOBODY}")
    kept = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in job["keep"]}
    for path in ["/var/tmp", "/dev/shm", "/run", *job["hide"]]:
        if os.path.isdir(path):
            hide(path, {k: fd for k, fd in kept.items() if k.startswith(path.rstrip("/") + "/")})
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.chdir("/tmp")


def limit(job):
    for name, value in (("RLIMIT_AS", job["address_space_bytes"]), ("RLIMIT_CPU", job["cpu_seconds"]),
                        ("RLIMIT_FSIZE", job["file_bytes"]), ("RLIMIT_NPROC", job["processes"])):
        if value:  # 0: not limited this way (RLIMIT_AS for managed runtimes, RLIMIT_NPROC under a cgroup)
            resource.setrlimit(getattr(resource, name), (value, value))


def run_commands(job):
    """Writes the source file, runs the compile then the run command; returns the jail's exit code."""
    with open(job["source"], "w") as source:
        source.write(job["code"])
    env = dict(os.environ, **job["env"])
    for command, failed in ((job["compile"], COMPILE_FAILED), (job["run"], RUN_FAILED)):
        if not command:
            continue
        status = subprocess.call(command, env=env, stdin=subprocess.DEVNULL)
        if status < 0:
            return 128 - status
        if status:
            print(f"[{command[0]} exited with status {status}]", flush=True)
            return failed
    return 0


def main():
    report = int(sys.argv[1])
    os.write(report, os.readlink("/proc/self").encode() + b"\n")  # the host's /proc is still mounted here
    os.close(report)
    job = json.loads(sys.stdin.read())
    try:
        if not job["unsafe"]:  # --unsafe-no-sandbox: limits and a clean environment only
            confine(job)
        limit(job)
    except Exception:  # noqa: BLE001 - reported as "sandbox setup failed", never run unconfined
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    nonce = job.pop("nonce")
    if job["run"]:
        status = run_commands(job)
        if status == 0:
            os.write(1, ("\n" + nonce + "\n").encode())
        os._exit(status)
    code = job["code"]
    del job
    try:
        exec(compile(code, "<program>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except MemoryError:
        os._exit(3)
    except AssertionError:
        traceback.print_exc(limit=-3)
        sys.stderr.flush()
        os._exit(1)
    except BaseException:  # noqa: BLE001 - includes SystemExit: exit() is not a pass
        traceback.print_exc(limit=-3)
        sys.stderr.flush()
        os._exit(2)
    sys.stdout.flush()
    os.write(1, ("\n" + nonce + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    main()
