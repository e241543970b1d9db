"""Shared fixtures: a loopback HTTP server, checkpoint makers that use the real frameworks,
and a runner for the pipeline's command line."""
from __future__ import annotations

import http.server
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_ROOT = Path(os.environ.get("VENV_ROOT", REPO / ".venvs"))
MM_PYTHON = VENV_ROOT / "mmpretrain" / "bin" / "python"
PADDLE_PYTHON = VENV_ROOT / "paddle" / "bin" / "python"
MINDSPORE_PYTHON = VENV_ROOT / "mindspore" / "bin" / "python"
# The suite runs as a terminal's foreground job would: SIGINT delivered as KeyboardInterrupt.
# pytest started from a background job (`make test &` in a script, no job control) has SIGINT
# ignored, and an ignored signal is inherited across exec: the pipeline runs and Ray nodes the
# tests start would then ignore Ctrl-C and Ray's task cancellation, and the Ctrl-C tests would
# measure how pytest was started, not the pipeline (seen: both failed, the run finished).
# A handler is reset to the default in each child; only an ignore is inherited.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

MODEL_IDS = {
    "res2net50-w14-s8": "res2net50-w14-s8_3rdparty_8xb32_in1k",
    "res2net50-w26-s8": "res2net50-w26-s8_3rdparty_8xb32_in1k",
}


# --------------------------------------------------------------------------- package index
_INDEX: list[str] = []   # why no package index answers ("" once one has), probed once


def index_unreachable() -> str:
    """'' when the package index pip is configured with (PyPI, a mirror, find-links) serves a
    small real wheel, else why not. Probed once per process, as setup would fetch it."""
    if not _INDEX:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            try:
                probe = subprocess.run(
                    ["python3", "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                     "--timeout", "10", "--retries", "0", "-q", "-d", folder, "six==1.17.0"],
                    capture_output=True, text=True, timeout=60)
                why = "" if probe.returncode == 0 else (
                    "no package index answers (pip download six==1.17.0: "
                    f"{(probe.stderr.strip().splitlines() or ['exit %d' % probe.returncode])[-1]})")
            except (OSError, subprocess.TimeoutExpired) as exc:
                why = f"no package index answers ({type(exc).__name__}: {exc})"
        _INDEX.append(why)
    return _INDEX[0]


def pytest_runtest_setup(item):
    if item.get_closest_marker("index") is not None and (why := index_unreachable()):
        pytest.skip(f"{why}; this test needs one (`make test-offline` leaves it out)")


# --------------------------------------------------------------------------- HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves registered byte strings; honours Range; can cut or fail requests on demand."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        server = self.server
        server.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                "agent": self.headers.get("User-Agent")})
        if server.stall:
            time.sleep(server.stall)   # a server that says nothing for a while
        if server.fail_next > 0:
            server.fail_next -= 1
            self.send_error(503, "try again")
            return
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404, "no such file")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and server.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):       # RFC 9110: nothing left to send
                self.send_error(416, "range not satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if server.send_length:           # without it the body ends when the connection does
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if server.cut_after is not None:
            cut, server.cut_after = server.cut_after, None
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection mid-body
            return
        self.wfile.write(chunk)


# The loopback server must never be reached through a proxy a machine has configured
# (http_proxy is honoured by urllib, here and in every pipeline subprocess).
for _var in ("no_proxy", "NO_PROXY"):
    os.environ[_var] = ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get(_var)]))


# --------------------------------------------------------------------------- mutmut
# Under `make mutation` subprocesses report the mutated functions they ran, and each test is
# credited with them (scripts/mutation_hits/); without it, code the tests reach only through
# `pipeline.py` subprocesses counted as "no tests". A mutant's tests run cheapest first, so
# that -x stops at a unit test before a framework fixture starts. Nothing happens outside
# mutmut.
sys.path.insert(0, str(REPO / "scripts" / "mutation_hits"))
from mutation_credit import install as _install_mutation_credit  # noqa: E402
from mutation_credit import (  # noqa: E402,F401 - pytest hooks, re-exported
    pytest_runtest_logreport, pytest_runtest_teardown, pytest_sessionfinish)
from mutation_credit import pytest_collection_modifyitems as _mutation_order  # noqa: E402

_install_mutation_credit(REPO)

# Tests of the source files themselves (their length, their lint) judge no mutant: mutmut
# rewrites each module it mutates with every mutant inside, and its copy of the tree is no
# git checkout (docs/testing.md, "Mutation testing").
NOT_UNDER_MUTMUT = pytest.mark.skipif(bool(os.environ.get("MUTANT_UNDER_TEST")),
                                      reason="mutmut rewrites the modules it mutates")

# `make test` runs on every core (pytest-xdist, --dist loadgroup --no-loadscope-reorder):
# tests are handed out in collection order, so the longest go first and the short ones fill
# the gaps at the end; a long test handed out last would keep one worker busy while the
# others idle. Modules by measured time, longest first (`make test` prints the slowest 25);
# a stale list costs minutes, never a result. Under mutmut, its own cheapest-first order.
LONGEST_FIRST = ("test_scale.py", "test_mindcv_e2e.py", "test_localize.py",
                 "test_accuracy_e2e.py", "test_mmpretrain_e2e.py", "test_demo.py",
                 "test_gate_inits.py", "test_paddleclas_e2e.py", "test_limits_workers.py",
                 "test_variants_e2e.py", "test_export_rewrites.py", "test_zoo.py")
# Before all of them, the test that makes `three_sources` (one thread, 2-3 minutes): on one
# worker while the other runs the Ray tests, which make `small_three`. When it came after the
# Ray tests, the next tests of both workers needed it and one worker waited idle for it
# (measured: 160 s of one core at 55-65 % CPU, 2026-12-07).
FIRST = ("tests/test_mindcv_e2e.py::test_three_sources_side_by_side_in_one_run",)


def pytest_collection_modifyitems(items):
    if os.environ.get("MUTANT_UNDER_TEST"):
        _mutation_order(items)
        return

    def rank(item) -> tuple[int, int, int]:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        slow = item.get_closest_marker("slow") is not None
        return (0 if slow else 1, 0 if item.nodeid in FIRST else 1,
                LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST))

    items.sort(key=rank)   # stable: a module's tests keep their order


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A signing key pair made for the test module, and a second public key (not the signer's)."""
    from release.signing import generate_key

    root = tmp_path_factory.mktemp("keys")
    return {"private": root / "key.pem", "public": generate_key(root / "key.pem"),
            "other_public": generate_key(root / "other.pem")}


def child_env(**extra: str) -> dict[str, str]:
    """os.environ for a child that imports this checkout: REPO added to PYTHONPATH, never in
    its place (under `make mutation` PYTHONPATH also carries the subprocess credit)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **extra, "PYTHONPATH": path}


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Reproducible random bytes: a failure can be rerun with the same data."""
    import random

    return random.Random(seed).randbytes(size)


def _serve(tls: tuple[Path, Path] | None = None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, tls))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.files, server.requests = {}, []
    server.fail_next, server.cut_after, server.honour_range = 0, None, True
    server.stall, server.send_length = 0, True
    scheme = "https" if tls else "http"
    server.url = lambda path: f"{scheme}://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def http_server():
    yield from _serve()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, its own CA, valid for a day, and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def https_server(tmp_path_factory, monkeypatch):
    """The loopback server over TLS, its certificate the only one this process trusts
    (SSL_CERT_FILE, read by OpenSSL's default verify paths at each connection)."""
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    yield from _serve((cert, key))


# --------------------------------------------------------------------------- S3 server
class S3Server:
    """moto's S3 server (a real HTTP server, the S3 wire protocol, signature checking on) in
    a child process on loopback, with one IAM user whose keys may do anything."""

    def __init__(self, endpoint: str, key_id: str, secret: str, proc: subprocess.Popen):
        self.endpoint, self.key_id, self.secret, self.proc = endpoint, key_id, secret, proc
        self._buckets = 0

    def env(self, **override: str) -> dict[str, str]:
        """What a publisher's process needs: the standard AWS variables, nothing from ~/.aws."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                **override}

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def bucket(self) -> str:
        """A new empty bucket: each test its own."""
        self._buckets += 1
        name = f"store-{os.getpid()}-{self._buckets}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, str]:
        """key -> ETag of everything in BUCKET."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    import socket

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The first 3 requests (the IAM user below) go unauthenticated; every later one must be
    # signed with a key that exists, so wrong credentials are refused as AWS refuses them.
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap", region_name="us-east-1")
    iam.create_user(UserName="publisher")
    iam.put_user_policy(UserName="publisher", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="publisher")["AccessKey"]
    try:
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --------------------------------------------------------------------------- frameworks
def run_in_env(python: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a module or script in a framework's environment (the framework lives only there)."""
    if not python.exists():
        pytest.fail(f"environment missing ({python}); run `make setup`")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(python), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def run_mm(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_in_env(MM_PYTHON, *args, timeout=timeout)


def run_paddle(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_in_env(PADDLE_PYTHON, *args, timeout=timeout)


def run_mindspore(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_in_env(MINDSPORE_PYTHON, *args, timeout=timeout)


# kind: (maker module, file suffix, arguments). Each framework's recipes are made together,
# in one process (its imports paid once), the first time a test asks for one of them.
CHECKPOINT_RECIPES = {
    "w14": ("mmpretrain", ".pth", ["--arch", "mmpretrain:" + MODEL_IDS["res2net50-w14-s8"],
                                   "--format", "openmmlab"]),
    # DataParallel's `module.` prefix on every key (test_mmpretrain_e2e.py): a small model
    "mnv2-module": ("mmpretrain", ".pth", ["--arch", "mmpretrain:mobilenet-v2_8xb32_in1k",
                                           "--format", "module"]),
    "w26": ("mmpretrain", ".pth", ["--arch", "mmpretrain:" + MODEL_IDS["res2net50-w26-s8"],
                                   "--format", "openmmlab"]),
    "official": ("mmpretrain", ".pth", ["--arch", "timm:res2net50_14w_8s", "--format", "bare"]),
    # the gate on the two other conditions (test_gate_inits.py): plain-init BatchNorm, and
    # BatchNorm statistics from Gaussian noise (logits ~1e3)
    "r18-plain": ("mmpretrain", ".pth", ["--arch", "mmpretrain:resnet18_8xb32_in1k",
                                         "--init", "plain"]),
    "mnv2-plain": ("mmpretrain", ".pth", ["--arch", "mmpretrain:mobilenet-v2_8xb32_in1k",
                                          "--init", "plain"]),
    "pd-vd-noise": ("paddleclas", ".pdparams", ["--model-id", "Res2Net50_vd_26w_4s",
                                                "--init", "noise"]),
    # the small models of SMALL_THREE (below)
    "mm-mnv2": ("mmpretrain", ".pth", ["--arch", "mmpretrain:mobilenet-v2_8xb32_in1k"]),
    "pd-mnv3s": ("paddleclas", ".pdparams", ["--model-id", "MobileNetV3_small_x0_35"]),
    "ms-mnv2": ("mindcv", ".ckpt", ["--model-id", "mobilenet_v2_075"]),
    # models of the export-rewrite and localiser tests (test_export_rewrites.py,
    # test_localize.py)
    "swin-tiny": ("mmpretrain", ".pth", ["--arch", "mmpretrain:swin-tiny_16xb64_in1k"]),
    "repvgg-a0": ("mmpretrain", ".pth", ["--arch", "mmpretrain:repvgg-a0_8xb32_in1k"]),
    **{kind: ("mindcv", ".ckpt", ["--model-id", model_id]) for kind, model_id in {
        "ms-mnv3": "mobilenet_v3_small_075", "ms-shufflenet": "shufflenet_v2_x0_5",
        "ms-vit": "vit_b_32_224"}.items()},
    **{kind: ("paddleclas", ".pdparams", ["--model-id", model_id, "--format", fmt])
       for kind, (model_id, fmt) in {
           "pd-14w": ("Res2Net50_14w_8s", "training"),
           "pd-26w": ("Res2Net50_26w_4s", "training"),
           "pd-vd": ("Res2Net50_vd_26w_4s", "training"),
           "pd-14w-param-names": ("Res2Net50_14w_8s", "param-names"),
           "pd-14w-layers": ("Res2Net50_14w_8s", "layers-prefix"),
           "pd-14w-numpy1": ("Res2Net50_14w_8s", "numpy1")}.items()},
    **{kind: ("mindcv", ".ckpt", ["--model-id", model_id, "--format", fmt,
                                  "--num-classes", str(classes)])
       for kind, (model_id, fmt, classes) in {
           "ms-r50": ("res2net50", "weights", 1000),
           # optimizer state beside the weights (test_mindcv_e2e.py): a small model
           "ms-mnv2-training": ("mobilenet_v2_075", "training", 1000),
           "ms-r50-1001": ("res2net50", "weights", 1001),
           "ms-r50-v1b": ("res2net50_v1b", "weights", 1000)}.items()},
}
FRAMEWORK_PYTHON = {"mmpretrain": MM_PYTHON, "paddleclas": PADDLE_PYTHON,
                    "mindcv": MINDSPORE_PYTHON}


def _once(folder: Path, make) -> None:
    """make(folder) once per test run, whichever xdist worker comes first (a lock, and a
    'done' mark written last); the others wait and reuse what it made."""
    import fcntl

    with open(folder / ".lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if not (folder / ".done").exists():
            make(folder)
            (folder / ".done").write_text("")


def shared_tmp(tmp_path_factory, name: str) -> Path:
    """A folder of this test run shared by its pytest-xdist workers (each worker's basetemp is
    pytest-N/popen-gwK; pytest-N is this run's alone), or this process's own without xdist."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """make(kind) -> path of a checkpoint made once per test run by the real framework
    (seed 0): the first ask for a framework's kind makes all of them, whichever worker asks."""
    root = shared_tmp(tmp_path_factory, "checkpoints")

    def make_all(source: str, folder: Path) -> None:
        jobs = [[*args, "--seed", "0", "--out", str(folder / f"{kind}{suffix}")]
                for kind, (of, suffix, args) in CHECKPOINT_RECIPES.items() if of == source]
        (folder / "jobs.json").write_text(json.dumps(jobs))
        run_in_env(FRAMEWORK_PYTHON[source], "-m", "converters.checkpoint_batch",
                   f"converters.{source}.make_checkpoint", str(folder / "jobs.json"))

    def make(kind: str) -> Path:
        source, suffix, _ = CHECKPOINT_RECIPES[kind]
        folder = root / source
        folder.mkdir(exist_ok=True)
        _once(folder, lambda f: make_all(source, f))
        return folder / f"{kind}{suffix}"

    return make


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A 100-byte PNG whose header declares width x height (its data is one empty row)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


THREE_SOURCES = {"res2net50-w14-s8": "w14", "paddleclas-res2net50-14w-8s": "pd-14w",
                 "mindcv-res2net50": "ms-r50"}   # shipped entry -> checkpoint kind
DATA_IMAGES = 10   # + 1 undecodable file + 1 over the pixel limit: 3 shards of 4
HUGE_IMAGE = "ILSVRC2012_val_00099999.png"   # 100 bytes declaring 25,000 x 25,000 pixels


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> Path:
    """A flat val.txt set shared by the run's workers (absolute paths appear in reports, so
    runs compared with each other read the same folder): 10 JPEGs (grayscale, CMYK and a
    PNG named .JPEG among them), 1 undecodable file and 1 image over the pixel limit (each
    source's loader must count it unreadable as too large, never decode it)."""
    from verify.images import imagenet_like

    def make(root: Path) -> None:
        paths = imagenet_like(root, DATA_IMAGES, seed=3, odd_every=4)
        (root / "ILSVRC2012_val_99999999.JPEG").write_bytes(b"not an image")
        png_declaring(root / HUGE_IMAGE, 25_000, 25_000)
        lines = [f"{p.name} {(i * 97) % 1000}" for i, p in enumerate(paths)]
        lines.insert(5, "ILSVRC2012_val_99999999.JPEG 3")
        lines.insert(2, f"{HUGE_IMAGE} 7")
        (root / "val.txt").write_text("\n".join(lines) + "\n")

    root = shared_tmp(tmp_path_factory, "shared-data")
    _once(root, make)
    return root


@pytest.fixture(scope="session")
def shared_manifest(tmp_path_factory) -> Path:
    """The three shipped entries, with batches of 4 and the unreadable-image limit a
    12-image set with 2 unreadable needs."""
    root = shared_tmp(tmp_path_factory, "shared-manifest")
    shipped = manifest_entries()
    _once(root, lambda folder: write_manifest(folder / "m.yaml", [
        {**shipped[name], "accuracy": {"batch_size": 4, "unreadable": 20}}
        for name in THREE_SOURCES]))
    return root / "m.yaml"


def _ask_for(checkpoints, kinds: list[str]) -> None:
    """Each framework's checkpoints are made by the first worker that asks, the others
    waiting: odd workers ask in reverse order, so that two workers at the start of the run
    make two frameworks' checkpoints side by side instead of one waiting for each."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    for kind in kinds[::-1] if worker.isdigit() and int(worker) % 2 else kinds:
        checkpoints(kind)


def shared_args(manifest: Path, checkpoints, names, out: Path, data: Path, *extra) -> list:
    """pipeline.py arguments of the runs compared with `three_sources` (same manifest, data,
    threads; figures and input fingerprints must match wherever the run happened)."""
    args = ["--manifest", str(manifest), "--out", str(out), "--data", str(data),
            "--threads", "1", *extra]
    _ask_for(checkpoints, [THREE_SOURCES[name] for name in names])
    for name in names:
        args += ["--only", name, "--checkpoint", f"{name}={checkpoints(THREE_SOURCES[name])}"]
    return args


@pytest.fixture(scope="session")
def three_sources(checkpoints, shared_manifest, shared_data, tmp_path_factory):
    """(out, stdout): the three shipped Res2Net entries converted side by side in one local
    run of pipeline.py, with --data (the shared set), fp16, one thread and --localize, from
    this run's checkpoints. Made once per test run, whichever worker asks first, and read by
    every test that needs a passing conversion of a source (report, model, localisation,
    accuracy) and by the Ray tests as the local figures to match: a conversion costs 30-90 s
    on 2 cores."""
    root = shared_tmp(tmp_path_factory, "three-sources")

    def make(folder: Path) -> None:
        proc = run_pipeline(*shared_args(shared_manifest, checkpoints, list(THREE_SOURCES),
                                         folder / "out", shared_data,
                                         "--precisions", "fp32,fp16", "--localize"))
        (folder / "result.json").write_text(json.dumps(
            {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))

    _once(root, make)
    result = json.loads((root / "result.json").read_text())
    assert result["returncode"] == 0, result["stdout"][-4000:] + result["stderr"][-3000:]
    return root / "out", result["stdout"]


# A small model of each source, for the tests whose point is where or how a run happens (on
# Ray, on a cluster losing a node), not the model: as `add` writes them (five fields, the
# rest derived at run time), with the shared manifest's accuracy settings. Their conversion
# with data and fp16 takes 15-30 s here, a Res2Net50's 80-140 s.
SMALL_THREE = {"mm-small": ("mmpretrain", "mobilenet-v2_8xb32_in1k", "mm-mnv2"),
               "pd-small": ("paddleclas", "MobileNetV3_small_x0_35", "pd-mnv3s"),
               "ms-small": ("mindcv", "mobilenet_v2_075", "ms-mnv2")}


def small_entry(name: str, checkpoints, **extra) -> dict:
    """SMALL_THREE's entry NAME as `add` writes it, with EXTRA fields (accuracy, ...)."""
    from fetch.download import sha256_file

    source, model_id, kind = SMALL_THREE[name]
    path = checkpoints(kind)
    return {"name": name, "source": source, "model_id": model_id, "num_classes": 1000,
            "checkpoint": {"url": path.as_uri(), "sha256": sha256_file(path)}, **extra}


@pytest.fixture(scope="session")
def small_manifest(checkpoints, tmp_path_factory) -> Path:
    _ask_for(checkpoints, [kind for _, _, kind in SMALL_THREE.values()])
    root = shared_tmp(tmp_path_factory, "small-manifest")
    _once(root, lambda folder: write_manifest(folder / "m.yaml", [
        small_entry(name, checkpoints, accuracy={"batch_size": 4, "unreadable": 20})
        for name in SMALL_THREE]))
    return root / "m.yaml"


def small_args(manifest: Path, names, out: Path, data: Path, *extra) -> list:
    """pipeline.py arguments of the runs compared with `small_three`."""
    args = ["--manifest", str(manifest), "--out", str(out), "--data", str(data),
            "--threads", "1", "--precisions", "fp32,fp16", *extra]
    for name in names:
        args += ["--only", name]
    return args


@pytest.fixture(scope="session")
def small_three(small_manifest, shared_data, tmp_path_factory) -> Path:
    """OUT of one local run of SMALL_THREE with the shared data and fp16, once per test run
    (whichever worker asks first): the figures the Ray tests must match."""
    root = shared_tmp(tmp_path_factory, "small-three")

    def make(folder: Path) -> None:
        proc = run_pipeline(*small_args(small_manifest, SMALL_THREE, folder / "out",
                                        shared_data))
        (folder / "result.json").write_text(json.dumps(
            {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))

    _once(root, make)
    result = json.loads((root / "result.json").read_text())
    assert result["returncode"] == 0, result["stdout"][-4000:] + result["stderr"][-3000:]
    return root / "out"


def helper_logits(python: Path, helper: str, model: str, checkpoint: Path, inputs,
                  tmp_path: Path):
    """Logits from tests/helpers/HELPER run in a framework env (its own loading path)."""
    import numpy as np

    np.save(tmp_path / "x.npy", inputs)
    run_in_env(python, str(REPO / "tests" / "helpers" / helper), model, str(checkpoint),
               str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    return np.load(tmp_path / "y.npy")


def assert_passed(report: dict) -> None:
    """Every check ran on both ONNX models and passed, and the interface is input/logits."""
    assert report["passed"] is True, report.get("error") or [
        c for c in report["checks"] if not c["passed"]]
    assert report["error"] is None
    names = {c["name"] for c in report["checks"]}
    assert {"opset", "io_names", "io_shapes", "max_abs_diff", "cosine_min", "top1_agreement",
            "top5_agreement"} <= names
    logit_checks = [c for c in report["checks"]
                    if c["scope"].get("stage") not in ("accuracy", "verify", "deploy")]
    assert {c["scope"]["model"] for c in logit_checks} == {"exported", "simplified"}
    assert all(c["passed"] for c in report["checks"])
    # The deploy gate: preprocess.json, run without the framework, made the source's tensors.
    [deploy] = [c for c in report["checks"] if c["name"] == "contract_preprocess"
                and c["scope"]["stage"] == "deploy"]
    assert deploy["measured"] == 0.0, deploy
    assert report["deploy"]["exact_images"] == report["deploy"]["images"] > 0
    # Gate power: the same logit check caught faults in mid layers (verify/canary.py), and
    # the same images gave the same logits at batch 1 and at the full batch.
    [canary] = [c for c in report["checks"] if c["name"] == "canary_caught"]
    assert canary["scope"]["model"] == "canary"
    assert report["verification"]["canary"]["status"] == "caught", report["verification"]
    assert {c["scope"]["model"] for c in report["checks"] if c["name"] == "batch_independent"
            } == {"exported", "simplified"}
    assert report["onnx"]["inputs"][0]["name"] == "input"
    assert report["onnx"]["outputs"][0]["name"] == "logits"
    assert report["onnx"]["inputs"][0]["shape"][0] == "batch"
    assert report["onnx"]["outputs"][0]["shape"][0] == "batch"


# --------------------------------------------------------------------------- pipeline CLI
def run_pipeline(*args: str, timeout: float = 1800, env: dict | None = None
                 ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pipeline.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_make(*args: str, timeout: float = 2400, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    """`make ARGS` in the repo with this session's environments (what users type)."""
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {}), "VENV_ROOT": str(VENV_ROOT)})


def read_report(out: Path, name: str) -> dict:
    return json.loads((out / name / "report.json").read_text())


def write_manifest(path: Path, entries: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"version": 1, "models": entries}, sort_keys=False))
    return path


def manifest_entries() -> dict[str, dict]:
    """Raw entries of manifests/all.yaml by name (anchors resolved)."""
    doc = yaml.safe_load((REPO / "manifests" / "all.yaml").read_text())
    return {e["name"]: e for e in doc["models"]}
