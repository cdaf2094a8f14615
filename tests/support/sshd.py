"""A real OpenSSH server on loopback, with its own keys and an ssh config that SshDevice uses.

    from support.sshd import sshd          # the pytest fixture (module scope)

    def test_x(sshd):
        dev = SshDevice(sshd.url(), ssh_config=sshd.config)     # "ssh://<you>@edgeship-test"
        dev_flaky = SshDevice(sshd.url("edgeship-flaky"), ssh_config=sshd.config)   # through sshd.proxy

Everything lives in a temp folder: a host key and a client key (ed25519, ssh-keygen), an sshd_config
(ListenAddress 127.0.0.1, a free port, AuthorizedKeysFile in the folder, StrictModes no, UsePAM no,
PidFile in the folder), the client config (Host aliases, Port, IdentityFile, StrictHostKeyChecking no,
UserKnownHostsFile in the folder, BatchMode yes). ``/usr/sbin/sshd -D -e -f ...`` runs in the foreground
of a child process that the fixture stops at teardown. The alias ``edgeship-flaky`` reaches the same
sshd through a TcpProxy, so a test can cut the network link (``sshd.proxy.drop()``) mid-run.

Needs openssh-server and openssh-client (scripts/install-system-deps.sh); skips without them, fails
instead when EDGESHIP_REQUIRE_SYSTEM_TOOLS=1.
"""
from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from .tcp_proxy import TcpProxy
from .tools import free_port, need_tool

SSHD = "/usr/sbin/sshd"


class SshServer:
    def __init__(self, root: Path, sshd: str = SSHD, ssh_keygen: str = "ssh-keygen"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sshd_bin, self.keygen = sshd, ssh_keygen
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.client_key = self.root / "id_ed25519"
        self.authorized_keys = self.root / "authorized_keys"
        self.sshd_config = self.root / "sshd_config"
        self.config = self.root / "ssh_config"      # the client config SshDevice(..., ssh_config=) reads
        self.log = self.root / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self.proxy: TcpProxy | None = None
        self._setup()

    def _setup(self) -> None:
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run([self.keygen, "-q", "-t", "ed25519", "-N", "", "-C", "edgeship-test", "-f", str(key)],
                               check=True, capture_output=True)
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        os.chmod(self.authorized_keys, 0o600)
        self.sshd_config.write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.root / 'sshd.pid'}
AuthorizedKeysFile {self.authorized_keys}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {self.user}
Subsystem sftp internal-sftp
ClientAliveInterval 5
LogLevel INFO
""")

    def _write_client_config(self) -> None:
        common = f"""\
  HostName 127.0.0.1
  User {self.user}
  IdentityFile {self.client_key}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile {self.root / 'known_hosts'}
  BatchMode yes
  LogLevel ERROR
"""
        assert self.proxy is not None
        self.config.write_text(f"Host edgeship-test\n  Port {self.port}\n{common}\n"
                               f"Host edgeship-flaky\n  Port {self.proxy.port}\n{common}")

    def url(self, alias: str = "edgeship-test") -> str:
        return f"ssh://{self.user}@{alias}"

    def start(self) -> "SshServer":
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.sshd_bin, "-D", "-e", "-f", str(self.sshd_config)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"sshd did not listen on {self.port}: {self.log.read_text()[-2000:]}")
        if self.proxy is None:
            self.proxy = TcpProxy(self.port)
        self._write_client_config()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None

    def ssh(self, command: str, alias: str = "edgeship-test", timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command with the plain ssh client and this config (for checks from a test)."""
        return subprocess.run(["ssh", "-F", str(self.config), alias, command], capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    need_tool("sshd", path=SSHD, package="openssh-server")
    need_tool("ssh", package="openssh-client")
    need_tool("ssh-keygen", package="openssh-client")
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()
