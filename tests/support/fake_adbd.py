"""A small fake adbd: the *device side* of the adb transport protocol on a loopback TCP port.

The real ``adb`` server connects to it after ``adb connect 127.0.0.1:PORT`` and the real client
then runs ``shell``, ``push`` and ``pull`` against it, so AdbDevice is tested through the real adb
binary end to end. What it implements (from AOSP packages/modules/adb: protocol.txt, SYNC.TXT,
SERVICES.TXT, shell_protocol.h):

* transport: 24-byte little-endian headers (command, arg0, arg1, length, checksum, magic).
  CNXN is answered with CNXN at once (no AUTH: like a device with ``ro.adb.secure=0``).
  Streams: OPEN -> OKAY(local, remote); every WRTE the host sends is acknowledged with OKAY;
  every WRTE we send waits for the host's OKAY before the next one; CLSE ends a stream.
* ``shell:CMD`` (legacy raw stream, stdout and stderr merged, no exit status) and, when
  ``shell_v2=True`` is advertised, ``shell,v2,...:CMD`` with the shell protocol's packets
  (id 0 stdin, 1 stdout, 2 stderr, 3 exit, 4 close-stdin, 5 window size; 1-byte id + u32 length).
* ``sync:`` with STAT (v1, i.e. lstat), LIST/DENT, SEND/DATA/DONE, RECV/DATA/DONE, OKAY/FAIL, QUIT.
  Advertised features: ``fixed_push_mkdir`` (SEND creates parent folders) and optionally
  ``shell_v2``. Not advertised, so the client never uses them: stat_v2, ls_v2, sendrecv_v2,
  delayed_ack, cmd, abb.

The "device file system" is a sandbox folder: device paths under MAPPED_PREFIXES (/data/local/tmp,
/sys/class/power_supply, /sys/devices/system/cpu, /system/bin, /sdcard) map to ``<sandbox>/<path>``.
Shell commands get the same mapping by rewriting those prefixes in the command text before
``/bin/sh -c`` runs it (so ``cat /sys/class/power_supply/battery/current_now`` reads the fake sysfs
file); output that prints a path therefore shows the sandbox path. Other absolute paths are the
host's own (``/bin/sh``, ``/proc``) — this is a protocol fixture, not a security boundary.
``/system/bin`` holds ``getprop`` and ``dumpsys`` scripts plus links to a curated set of host tools
(no python unless ``python=True``), and is the shell's PATH.

Run it alone for manual poking: ``python tests/support/fake_adbd.py --root /tmp/dev --port 5599``.
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_STLS = 0x534C5453
A_VERSION = 0x01000001  # A_VERSION_SKIP_CHECKSUM; we still fill the checksum for older hosts
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024

MAPPED_PREFIXES = ("/data/local/tmp", "/sys/class/power_supply", "/sys/devices/system/cpu",
                   "/system/bin", "/sdcard")
_PREFIX_RE = re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(p) for p in MAPPED_PREFIXES) + r")(?![\w.\-])")

DEFAULT_PROPS = {
    "ro.product.name": "edgeship_test",
    "ro.product.model": "EdgeshipTest",
    "ro.product.device": "test",
    "ro.product.manufacturer": "Edgeship",
    "ro.soc.manufacturer": "Edgeship",
    "ro.soc.model": "ES1000",
    "ro.board.platform": "fakeplat",
    "ro.hardware": "fake",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.product.cpu.abi": "x86_64",  # honest: the shell runs host binaries
    "ro.product.cpu.abilist": "x86_64",
}

# Host tools linked into the fake /system/bin (Android's toybox offers the same names).
TOOLS = ("sh", "cat", "ls", "mkdir", "rm", "rmdir", "echo", "printf", "sleep", "cp", "mv", "chmod",
         "touch", "uname", "id", "env", "head", "tail", "wc", "grep", "sed", "tr", "cut", "sort", "date",
         "stat", "find", "kill", "ps", "true", "false", "dirname", "basename", "readlink", "xargs",
         "tee", "tar", "timeout", "md5sum", "sha256sum", "test", "[", "expr", "seq", "awk")

GETPROP = """#!/bin/sh
# fake getprop: reads KEY=VALUE lines from the props file next to this script
props="$(dirname "$0")/../build.prop.fake"
if [ $# -eq 0 ]; then
  while IFS='=' read -r k v; do [ -n "$k" ] && printf '[%s]: [%s]\\n' "$k" "$v"; done < "$props"
  exit 0
fi
while IFS='=' read -r k v; do
  if [ "$k" = "$1" ]; then printf '%s\\n' "$v"; exit 0; fi
done < "$props"
printf '%s\\n' "$2"
"""

DUMPSYS = """#!/bin/sh
# fake dumpsys: 'battery' (from the fake sysfs, like BatteryService's dump) and 'thermalservice'
bat=/sys/class/power_supply/battery
case "$1" in
battery)
  st=$(cat $bat/status 2>/dev/null)
  usb=false; [ "$st" = Charging ] && usb=true
  echo "Current Battery Service state:"
  echo "  AC powered: false"
  echo "  USB powered: $usb"
  echo "  Wireless powered: false"
  echo "  status: $( [ "$st" = Charging ] && echo 2 || echo 3 )"
  echo "  health: 2"
  echo "  present: true"
  echo "  level: $(cat $bat/capacity 2>/dev/null)"
  echo "  scale: 100"
  echo "  voltage: $(( $(cat $bat/voltage_now) / 1000 ))"
  echo "  temperature: 281"
  echo "  technology: Li-ion"
  ;;
thermalservice)
  echo "IsStatusOverride: false"
  echo "ThermalEventListeners:"
  echo "Thermal Status: 0"
  ;;
*) echo "Can't find service: $1"; exit 1 ;;
esac
"""


def _pack(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF) + data


class _Stream:
    """One multiplexed stream: our id, the host's id, inbound bytes, and WRTE flow control."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.inbound: queue.Queue[bytes | None] = queue.Queue()
        self._buf = b""
        self._acked = threading.Event()
        self._send_lock = threading.Lock()
        self.closed = threading.Event()

    # -- host -> device
    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.inbound.get()
            if chunk is None:
                raise EOFError("stream closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_some(self) -> bytes:
        if not self._buf:
            chunk = self.inbound.get()
            if chunk is None:
                raise EOFError("stream closed")
            self._buf = chunk
        out, self._buf = self._buf, b""
        return out

    # -- device -> host
    def write(self, data: bytes) -> None:
        with self._send_lock:
            for i in range(0, len(data), self.conn.max_payload):
                if self.closed.is_set():
                    raise EOFError("stream closed")
                self._acked.clear()
                self.conn.send(A_WRTE, self.local_id, self.remote_id, data[i:i + self.conn.max_payload])
                while not self._acked.wait(0.2):
                    if self.closed.is_set():
                        raise EOFError("stream closed")

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
            self.conn.forget(self)

    def remote_closed(self) -> None:
        self.closed.set()
        self.inbound.put(None)
        self._acked.set()


class _Connection:
    def __init__(self, server: "FakeAdbd", sock: socket.socket):
        self.server, self.sock = server, sock
        self.max_payload = 4096
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._lock = threading.Lock()

    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        with self._send_lock:
            try:
                self.sock.sendall(_pack(cmd, arg0, arg1, data))
            except OSError:
                pass

    def forget(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.pop(stream.local_id, None)

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def serve(self) -> None:
        try:
            while True:
                cmd, arg0, arg1, length, _check, magic = struct.unpack("<6I", self._recv_exact(24))
                if magic != cmd ^ 0xFFFFFFFF:
                    log.warning("bad magic from host; dropping connection")
                    return
                data = self._recv_exact(length) if length else b""
                self._handle(cmd, arg0, arg1, data)
        except (EOFError, OSError):
            pass
        finally:
            with self._lock:
                streams = list(self._streams.values())
                self._streams.clear()
            for s in streams:
                s.remote_closed()
            try:
                self.sock.close()
            except OSError:
                pass

    def _handle(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            self.max_payload = max(4096, min(arg1, MAX_PAYLOAD))
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.server.banner().encode())
        elif cmd == A_OPEN:
            service = data.rstrip(b"\0").decode("utf-8", "replace")
            with self._lock:
                local_id = self._next_id
                self._next_id += 1
                stream = _Stream(self, local_id, arg0)
                self._streams[local_id] = stream
            handler = self.server.handler_for(service)
            if handler is None:
                log.info("fake adbd: refusing service %r", service)
                self.forget(stream)
                self.send(A_CLSE, 0, arg0)
                return
            self.send(A_OKAY, local_id, arg0)
            threading.Thread(target=self._run_handler, args=(handler, stream, service), daemon=True).start()
        elif cmd == A_OKAY:
            with self._lock:
                s = self._streams.get(arg1)
            if s:
                s._acked.set()
        elif cmd == A_WRTE:
            with self._lock:
                s = self._streams.get(arg1)
            if s:
                s.inbound.put(data)
                self.send(A_OKAY, s.local_id, s.remote_id)
        elif cmd == A_CLSE:
            with self._lock:
                s = self._streams.pop(arg1, None)
            if s:
                s.remote_closed()
        else:
            log.info("fake adbd: ignoring command 0x%08x", cmd)

    @staticmethod
    def _run_handler(handler, stream: _Stream, service: str) -> None:
        try:
            handler(stream, service)
        except EOFError:
            pass
        except Exception:  # a fixture bug must not hang the host: log it, close the stream
            log.exception("fake adbd: service %r failed", service)
        finally:
            stream.close()


class FakeAdbd:
    """The fake device. ``root`` becomes the sandbox ("/" of the device for the mapped prefixes)."""

    def __init__(self, root: Path, *, props: dict[str, str] | None = None, shell_v2: bool = True,
                 python: bool = False, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root).resolve()
        self.props = {**DEFAULT_PROPS, **(props or {})}
        self.shell_v2 = shell_v2
        self.python = python
        self.host, self._port = host, port
        self._sock: socket.socket | None = None
        self._procs: set[subprocess.Popen] = set()
        self._procs_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._unplugged = False
        self.services_seen: list[str] = []
        self._build_sandbox()

    # ---------------------------------------------------------------- sandbox
    def _build_sandbox(self) -> None:
        r = self.root
        for p in MAPPED_PREFIXES:
            (r / p.lstrip("/")).mkdir(parents=True, exist_ok=True)
        bindir = r / "system/bin"
        tools = TOOLS + (("python3",) if self.python else ())
        for name in tools:
            target = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
            link = bindir / name
            if target and not link.exists():
                link.symlink_to(target)
        for name, text in (("getprop", GETPROP), ("dumpsys", DUMPSYS)):
            f = bindir / name
            f.write_text(text)
            f.chmod(0o755)
        (r / "system/build.prop.fake").write_text("".join(f"{k}={v}\n" for k, v in self.props.items()))
        cpu = r / "sys/devices/system/cpu/cpu0/cpufreq"
        cpu.mkdir(parents=True, exist_ok=True)
        (cpu / "scaling_governor").write_text("schedutil\n")
        self.set_battery(current_now=-350000, voltage_now=3850000, status="Discharging", capacity=80)

    def set_battery(self, **values: object) -> None:
        """Write fake sysfs files under /sys/class/power_supply/battery (current in µA, voltage in µV)."""
        bat = self.root / "sys/class/power_supply/battery"
        bat.mkdir(parents=True, exist_ok=True)
        for key, value in values.items():
            tmp = bat / f".{key}.tmp"
            tmp.write_text(f"{value}\n")
            os.replace(tmp, bat / key)

    def device_path(self, path: str) -> Path | None:
        """The sandbox path for a device path, or None when the path is outside the mapped prefixes."""
        norm = os.path.normpath(path) if path else path
        for p in MAPPED_PREFIXES:
            if norm == p or norm.startswith(p + "/"):
                return self.root / norm.lstrip("/")
        return None

    def map_command(self, cmd: str) -> str:
        return _PREFIX_RE.sub(lambda m: str(self.root) + m.group(1), cmd)

    # ---------------------------------------------------------------- server
    @property
    def port(self) -> int:
        assert self._sock is not None, "not started"
        return self._sock.getsockname()[1]

    @property
    def serial(self) -> str:
        return f"{self.host}:{self.port}"

    def banner(self) -> str:
        feats = ["fixed_push_mkdir"] + (["shell_v2"] if self.shell_v2 else [])
        keys = ("ro.product.name", "ro.product.model", "ro.product.device")
        return "device::" + "".join(f"{k}={self.props[k]};" for k in keys) + "features=" + ",".join(feats)

    def start(self) -> "FakeAdbd":
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, self._port))
        self._sock.listen(4)
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def _accept_loop(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if self._unplugged:  # "no device here": the adb server's reconnect attempts fail
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._procs_lock:
                self._conns.add(conn)
            threading.Thread(target=_Connection(self, conn).serve, daemon=True).start()

    def unplug(self) -> None:
        """Pull the cable: cut the transport and refuse the adb server's reconnects until ``replug()``."""
        self._unplugged = True
        self.disconnect()

    def replug(self) -> None:
        self._unplugged = False

    def disconnect(self) -> None:
        """Cut every transport connection (the adb server reconnects to `adb connect`ed devices by itself)."""
        with self._procs_lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self.disconnect()
        with self._procs_lock:
            procs = list(self._procs)
        for p in procs:
            _kill_group(p)

    def __enter__(self) -> "FakeAdbd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- services
    def handler_for(self, service: str):
        self.services_seen.append(service)
        if service.startswith("shell,") or service.startswith("shell:"):
            if service.startswith("shell,") and not self.shell_v2:
                return None
            return self._shell
        if service == "sync:":
            return self._sync
        return None

    def _env(self) -> dict[str, str]:
        return {"PATH": str(self.root / "system/bin"), "HOME": str(self.root / "data/local/tmp"),
                "TMPDIR": str(self.root / "data/local/tmp"), "LANG": "C.UTF-8", "USER": "shell"}

    def _shell(self, stream: _Stream, service: str) -> None:
        head, _, command = service.partition(":")
        v2 = head.startswith("shell,") and "v2" in head.split(",")
        argv = ["/bin/sh", "-c", self.map_command(command)] if command else ["/bin/sh"]
        proc = subprocess.Popen(argv, cwd=self.root, env=self._env(), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
                                start_new_session=True)
        with self._procs_lock:
            self._procs.add(proc)
        # When the host hangs up (stream closed, cable pulled) the command is not killed: its output pipes
        # close on its next write (SIGPIPE), as with a real adbd; a silent command keeps running.

        def pump(pipe, packet_id: int) -> None:
            try:
                while True:
                    chunk = os.read(pipe.fileno(), 65536)
                    if not chunk:
                        return
                    if v2:
                        stream.write(struct.pack("<BI", packet_id, len(chunk)) + chunk)
                    else:
                        stream.write(chunk)
            except (EOFError, OSError):
                pipe.close()  # the host is gone: the command's next write gets SIGPIPE

        def feed() -> None:  # host -> stdin
            try:
                while True:
                    if v2:
                        pid, n = struct.unpack("<BI", stream.read_exact(5))
                        data = stream.read_exact(n) if n else b""
                        if pid == 0:
                            proc.stdin.write(data)
                            proc.stdin.flush()
                        elif pid == 4:
                            proc.stdin.close()
                            return
                    else:
                        data = stream.read_some()
                        proc.stdin.write(data)
                        proc.stdin.flush()
            except (EOFError, OSError, ValueError):
                pass

        pumps = [threading.Thread(target=pump, args=(proc.stdout, 1), daemon=True)]
        if v2:
            pumps.append(threading.Thread(target=pump, args=(proc.stderr, 2), daemon=True))
        for t in pumps:
            t.start()
        threading.Thread(target=feed, daemon=True).start()
        for t in pumps:
            t.join()
        rc = proc.wait()
        with self._procs_lock:
            self._procs.discard(proc)
        if v2 and not stream.closed.is_set():
            stream.write(struct.pack("<BIB", 3, 1, rc & 0xFF if rc >= 0 else (128 - rc) & 0xFF))

    def _sync(self, stream: _Stream, service: str) -> None:
        while True:
            ident, length = struct.unpack("<4sI", stream.read_exact(8))
            if ident == b"QUIT":
                return
            path = stream.read_exact(length).decode("utf-8", "replace")
            if ident == b"STAT":
                local = self.device_path(path)
                try:
                    st = os.lstat(local) if local else None
                except OSError:
                    st = None
                if st is None:
                    stream.write(struct.pack("<4s3I", b"STAT", 0, 0, 0))
                else:
                    stream.write(struct.pack("<4s3I", b"STAT", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF,
                                             int(st.st_mtime) & 0xFFFFFFFF))
            elif ident == b"LIST":
                local = self.device_path(path)
                out = b""
                try:
                    entries = list(os.scandir(local)) if local else []
                except OSError:
                    entries = []
                for e in entries:
                    st = e.stat(follow_symlinks=False)
                    name = e.name.encode()
                    out += struct.pack("<4s4I", b"DENT", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF,
                                       int(st.st_mtime) & 0xFFFFFFFF, len(name)) + name
                out += struct.pack("<4s4I", b"DONE", 0, 0, 0, 0)
                stream.write(out)
            elif ident == b"SEND":
                self._recv_file(stream, path)
            elif ident == b"RECV":
                self._send_file(stream, path)
            else:
                self._fail(stream, f"unknown sync request {ident!r}")
                return

    @staticmethod
    def _fail(stream: _Stream, msg: str) -> None:
        data = msg.encode()
        stream.write(struct.pack("<4sI", b"FAIL", len(data)) + data)

    def _recv_file(self, stream: _Stream, spec: str) -> None:
        path, _, mode_s = spec.rpartition(",")
        if not path:
            path, mode_s = spec, "420"
        local = self.device_path(path)
        chunks: list[bytes] = []
        mtime = 0
        while True:  # read the whole transfer first, then answer once (as adbd does after DONE)
            ident, n = struct.unpack("<4sI", stream.read_exact(8))
            if ident == b"DATA":
                chunks.append(stream.read_exact(n))
            elif ident == b"DONE":
                mtime = n
                break
            else:
                self._fail(stream, f"unexpected {ident!r} during SEND")
                return
        if local is None:
            self._fail(stream, f"couldn't create file: Read-only file system ({path})")
            return
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.adbtmp")
            tmp.write_bytes(b"".join(chunks))
            mode = int(mode_s) if mode_s.isdigit() else 0o644
            os.chmod(tmp, stat.S_IMODE(mode) or 0o644)
            os.replace(tmp, local)
            if mtime:
                os.utime(local, (mtime, mtime))
        except OSError as e:
            self._fail(stream, f"couldn't create file: {e.strerror}")
            return
        stream.write(struct.pack("<4sI", b"OKAY", 0))

    def _send_file(self, stream: _Stream, path: str) -> None:
        local = self.device_path(path)
        try:
            if local is None:
                raise FileNotFoundError
            f = open(local, "rb")
        except OSError:
            self._fail(stream, f"open failed: No such file or directory ({path})")
            return
        with f:
            while True:
                chunk = f.read(SYNC_DATA_MAX)
                if not chunk:
                    break
                stream.write(struct.pack("<4sI", b"DATA", len(chunk)) + chunk)
        stream.write(struct.pack("<4sI", b"DONE", 0))


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-shell-v2", action="store_true")
    ap.add_argument("--python", action="store_true", help="put python3 on the fake device's PATH")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    dev = FakeAdbd(a.root, shell_v2=not a.no_shell_v2, python=a.python, port=a.port).start()
    print(f"fake adbd on {dev.serial}; sandbox {dev.root}; try: adb connect {dev.serial}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        dev.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
