"""Real services for the test suite: a single-node Ceph cluster with its S3 gateway, and MLflow.

Nothing here is emulated. :func:`start_ceph_s3` runs one ``ceph-mon``, one ``ceph-osd`` (memstore,
so the data lives in memory) and ``radosgw`` (beast frontend) on loopback, each as a foreground
subprocess owned by the caller, with every config/data/log/run file under ``workdir``.
:func:`start_mlflow_server` runs ``mlflow server`` with a sqlite backend store and its artifacts
in a bucket on that Ceph gateway.

Install the Ceph binaries with ``scripts/setup-services.sh`` (Debian packages ceph-mon, ceph-osd,
radosgw). Settings that matter (found by trial on Ceph 16): with ``auth * required = none`` the
default ``secure`` messenger mode makes radosgw fail, so every ``ms * mode`` is ``crc``; a
one-OSD cluster needs ``osd pool default size = 1`` and ``mon allow pool size one``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")
SETUP_HINT = "run `scripts/setup-services.sh` (as root) to install the Debian packages ceph-mon, ceph-osd, radosgw"


class ServiceError(RuntimeError):
    """A service did not start, or a command against it failed; the message carries the log tail."""


def missing_ceph_binaries() -> list[str]:
    """Ceph executables that are not on PATH (empty when Ceph is installed)."""
    return [b for b in CEPH_BINARIES if shutil.which(b) is None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:])


def _random_key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _new_keys() -> tuple[str, str]:
    access = _random_key(20, string.ascii_uppercase + string.digits)
    secret = _random_key(40, string.ascii_letters + string.digits)
    return access, secret


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL this child if the test process dies without stopping it (no orphans)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Proc:
    """A foreground daemon in its own process group, stdout/stderr to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self._fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left; always reaps."""
        if self.popen.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # The leader is gone; take down anything it left in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._fh.close()


def _wait_until(ready: Callable[[], bool], *, timeout: float, what: str, procs: list[_Proc], logs: list[Path]) -> None:
    """Poll ``ready`` until it is true; raise :class:`ServiceError` with the log tails otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        dead = [p for p in procs if not p.alive()]
        if dead:
            reason = f"{dead[0].name} exited with status {dead[0].popen.returncode}"
            break
        try:
            if ready():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            reason = f"not ready after {timeout:.0f} s"
            break
        time.sleep(0.25)
    tails = "\n".join(f"--- {p} (tail) ---\n{_tail(p)}" for p in logs)
    raise ServiceError(f"{what}: {reason}\n{tails}")


def _http_answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status code counts)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True


class CephS3:
    """A running single-node Ceph cluster with an S3 gateway; build it with :func:`start_ceph_s3`.

    Attributes:
        workdir: where ceph.conf, the data, logs and run files live.
        endpoint: the S3 endpoint, ``http://127.0.0.1:PORT``.
        region: the region to sign requests with.
        access_key, secret_key: the admin S3 user's keys (uid :attr:`admin_uid`).
    """

    admin_uid = "admin"
    region = "us-east-1"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.conf = workdir / "ceph.conf"
        self.log_dir = workdir / "log"
        self.mon_port = free_port()
        self.rgw_port = free_port()
        while self.rgw_port == self.mon_port:
            self.rgw_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.rgw_port}"
        self.access_key, self.secret_key = _new_keys()
        self.fsid = str(uuid.uuid4())
        self._mon: _Proc | None = None
        self._osd: _Proc | None = None
        self._rgw: _Proc | None = None

    # ------------------------------------------------------------------ setup

    def _write_conf(self) -> None:
        w = self.workdir
        for d in ("mon", "osd", "rgw", "log", "run", "crash", "tmp"):
            (w / d).mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to 107 bytes: keep admin sockets only when they fit.
        asok = f"{w}/run/$cluster-$name.asok"
        asok_line = f"admin socket = {asok}" if len(str(w)) + 40 < 100 else "admin socket ="
        conf = f"""
[global]
fsid = {self.fsid}
mon host = v2:127.0.0.1:{self.mon_port}
mon initial members = a
public network = 127.0.0.0/8
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = memstore
memstore device bytes = 1073741824
run dir = {w}/run
crash dir = {w}/crash
tmp dir = {w}/tmp
log file = {w}/log/$cluster-$name.log
mon cluster log file = {w}/log/$cluster.log
pid file = {w}/run/$cluster-$name.pid
{asok_line}
keyring = {w}/keyring
mon data = {w}/mon/$cluster-$id
osd data = {w}/osd/$cluster-$id
rgw data = {w}/rgw/$cluster-$id
mgr data = {w}/mgr/$cluster-$id
mds data = {w}/mds/$cluster-$id
erasure code dir = /usr/lib/x86_64-linux-gnu/ceph/erasure-code
log to stderr = false
err to stderr = true
log flush on exit = true

[osd]
osd crush update on start = true
osd max object name len = 256
osd max object namespace len = 64
osd memory target = 536870912

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port}
rgw dns name = 127.0.0.1
rgw init timeout = 120
rgw enable usage log = false
rgw thread pool size = 32
"""
        erasure_dir = Path("/usr/lib/x86_64-linux-gnu/ceph/erasure-code")
        if not erasure_dir.is_dir():
            conf = conf.replace(f"erasure code dir = {erasure_dir}\n", "")
        self.conf.write_text(conf.lstrip())

    def _cmd(self, argv: list[str], *, timeout: float = 60.0) -> str:
        """Run a Ceph CLI command against this cluster; raise with its output when it fails."""
        full = [argv[0], "-c", str(self.conf), *argv[1:]]
        try:
            r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ServiceError(f"{' '.join(full)} timed out after {timeout:.0f} s\n{self._log_tails()}") from e
        if r.returncode != 0:
            raise ServiceError(
                f"{' '.join(full)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n{self._log_tails()}"
            )
        return r.stdout

    def _logs(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log"))

    def _log_tails(self) -> str:
        return "\n".join(f"--- {p} (tail) ---\n{_tail(p, 20)}" for p in self._logs())

    def _procs(self) -> list[_Proc]:
        return [p for p in (self._mon, self._osd, self._rgw) if p is not None]

    def _start(self) -> None:
        self._write_conf()
        w = self.workdir
        conf = ["-c", str(self.conf)]
        monmap = w / "monmap"
        self._cmd(["monmaptool", "--create", "--clobber", "--fsid", self.fsid,
                   "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", str(monmap)])  # fmt: skip
        self._cmd(["ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap)])
        self._mon = _Proc("ceph-mon", ["ceph-mon", *conf, "-f", "-i", "a"], self.log_dir / "ceph-mon.a.stdout")
        osd_uuid = str(uuid.uuid4())
        # `ceph osd new` waits for the monitor to form a quorum (a few seconds).
        osd_id = self._cmd(["ceph", "--connect-timeout", "30", "osd", "new", osd_uuid], timeout=60).strip()
        (w / "osd" / f"ceph-{osd_id}").mkdir(parents=True, exist_ok=True)
        self._cmd(["ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], timeout=60)
        self._osd = _Proc(
            "ceph-osd", ["ceph-osd", *conf, "-f", "-i", osd_id], self.log_dir / f"ceph-osd.{osd_id}.stdout"
        )
        self.start_gateway()
        self._cmd(["radosgw-admin", "user", "create", "--uid", self.admin_uid, "--display-name", "admin",
                   "--access-key", self.access_key, "--secret-key", self.secret_key])  # fmt: skip

    # ------------------------------------------------------------------ API

    def create_user(self, uid: str) -> tuple[str, str]:
        """Create an S3 user ``uid`` (policy principal ``arn:aws:iam:::user/<uid>``); returns (access, secret)."""
        access, secret = _new_keys()
        out = self._cmd(["radosgw-admin", "user", "create", "--uid", uid, "--display-name", uid,
                         "--access-key", access, "--secret-key", secret])  # fmt: skip
        info = json.loads(out)
        assert info["user_id"] == uid, info
        return access, secret

    def client(self, access_key: str | None = None, secret_key: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client with path-style addressing (the admin user's keys by default)."""
        import boto3
        from botocore.config import Config

        cfg = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            **config,
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=cfg,
        )

    def gateway_running(self) -> bool:
        """Whether the radosgw process is alive."""
        return self._rgw is not None and self._rgw.alive()

    def stop_gateway(self) -> None:
        """Stop only radosgw (the cluster keeps running): S3 requests then fail to connect."""
        if self._rgw is not None:
            self._rgw.stop()
            self._rgw = None

    def start_gateway(self, timeout: float = 90.0) -> None:
        """(Re)start radosgw on the same port and wait until S3 answers."""
        if self.gateway_running():
            return
        rgw_log = self.log_dir / "ceph-client.rgw.a.log"
        self._rgw = _Proc(
            "radosgw",
            ["radosgw", "-c", str(self.conf), "-f", "-n", "client.rgw.a"],
            self.log_dir / "radosgw.stdout",
        )
        _wait_until(
            lambda: _http_answers(self.endpoint + "/"),
            timeout=timeout,
            what=f"Ceph S3 gateway at {self.endpoint}",
            procs=self._procs(),
            logs=[*self._logs(), rgw_log, self.log_dir / "radosgw.stdout"],
        )

    def stop(self) -> None:
        """Stop every process started for this cluster (gateway, OSD, monitor), in that order."""
        for attr in ("_rgw", "_osd", "_mon"):
            proc = getattr(self, attr)
            if proc is not None:
                proc.stop()
                setattr(self, attr, None)


def start_ceph_s3(workdir: Path) -> CephS3:
    """Start a single-node Ceph cluster with S3 under ``workdir`` and create the admin S3 user.

    Raises:
        ServiceError: a binary is missing, or a daemon failed or did not answer in time (the
            message carries the tail of the logs). Everything started so far is stopped first.
    """
    missing = missing_ceph_binaries()
    if missing:
        raise ServiceError(f"Ceph is not installed (missing {', '.join(missing)}): {SETUP_HINT}")
    workdir.mkdir(parents=True, exist_ok=True)
    ceph = CephS3(workdir)
    atexit.register(ceph.stop)  # a no-op once stopped; a safety net if a session ends abruptly
    try:
        ceph._start()
    except BaseException:
        ceph.stop()
        raise
    return ceph


class MLflowServer:
    """A running ``mlflow server`` (sqlite backend, artifacts proxied to Ceph S3).

    Attributes:
        uri: the tracking URI, ``http://127.0.0.1:PORT``.
        bucket: the artifact bucket on Ceph.
        workdir: where mlflow.db and the server log live.
    """

    bucket = "mlflow-artifacts"

    def __init__(self, workdir: Path, s3: CephS3) -> None:
        self.workdir = workdir
        self.s3 = s3
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "mlflow-server.log"
        self._proc: _Proc | None = None

    def _start(self, timeout: float) -> None:
        client = self.s3.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=self.bucket)
        mlflow = Path(sys.executable).with_name("mlflow")
        if not mlflow.exists():
            raise ServiceError(f"{mlflow} not found: install the tracking extra (scripts/setup.sh dev)")
        env = {
            **os.environ,
            "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_DEFAULT_REGION": self.s3.region,
            "MLFLOW_DISABLE_TELEMETRY": "true",  # offline machines: no usage reporting attempts
        }
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_URI"):
            env.pop(var, None)
        argv = [
            str(mlflow), "server",
            "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{self.bucket}/",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        self._proc = _Proc("mlflow server", argv, self.log, env=env)
        _wait_until(
            lambda: urllib.request.urlopen(self.uri + "/health", timeout=2).status == 200,
            timeout=timeout,
            what=f"MLflow server at {self.uri}",
            procs=[self._proc],
            logs=[self.log],
        )

    def stop(self) -> None:
        """Stop the server and its worker processes."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None


def start_mlflow_server(workdir: Path, s3: CephS3, timeout: float = 90.0) -> MLflowServer:
    """Start ``mlflow server`` with a sqlite store in ``workdir`` and artifacts in Ceph bucket ``mlflow-artifacts``.

    Raises:
        ServiceError: the server exited or did not answer ``/health`` in time (with the log tail).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    server = MLflowServer(workdir, s3)
    atexit.register(server.stop)
    try:
        server._start(timeout)
    except BaseException:
        server.stop()
        raise
    return server
