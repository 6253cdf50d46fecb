"""What the jupyter recipe's checks run in an image (from /dlenv-checks): the server the image
starts (its entrypoint and command, as `docker run` starts them) on a free port.

    token            with JUPYTER_TOKEN: JupyterLab listens on every interface on JUPYTER_PORT,
                     /api/status answers with the token and refuses without it or with another,
                     the log never shows the token, and JupyterLab fetches no news (overrides.json)
    generated        without JUPYTER_TOKEN: the server makes a token and logs the URL with it
    kernel root|user a notebook saved through the server lands in /workspace, and its kernel
                     (the server's REST and websocket API, as JupyterLab drives it) runs 1+1,
                     in /opt/venv, as root or as the DLENV_UID user (owning the notebook)

Each prints one line saying what it did; any failure is an exception (exit 1).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

# What the image runs: its ENTRYPOINT and CMD (images/jupyter/Dockerfile).
START = ["/usr/local/bin/dlenv-jupyter-entrypoint", "jupyter", "lab"]
WORKSPACE = "/workspace"
UID, GID = 4242, 4243     # a host user's ids, as `dlenv compose --user` passes them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The image's server, started as the container would start it, stopped on exit."""

    def __init__(self, token: str | None, env: dict[str, str] | None = None):
        self.port = free_port()
        self.token = token
        environ = {k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"}
        environ.update(JUPYTER_PORT=str(self.port), **(env or {}))
        if token:
            environ["JUPYTER_TOKEN"] = token
        self.log = tempfile.NamedTemporaryFile("w+", prefix="jupyter-", suffix=".log")
        self.process = subprocess.Popen(START, env=environ, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 90
        while self.status(None) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer on port {self.port}:\n{self.output()[-2000:]}")
            time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, path: str, token: str | None, method: str = "GET", body: dict | None = None):
        """(HTTP status, parsed JSON body or None); None when nothing answers yet."""
        headers = {"Authorization": f"token {token}"} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url(path), data=data, method=method,
                                     headers={**headers, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return None

    def status(self, token: str | None) -> int | None:
        answer = self.request("/api/status", token)
        return answer[0] if answer else None


def listening(port: int) -> list[str]:
    """The local addresses of the sockets listening on port (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hexport = local.partition(":")
                if state == "0A" and int(hexport, 16) == port:   # 0A: LISTEN
                    found.append(address)
    return found


def check_token() -> str:
    token = secrets.token_hex(16)
    with Server(token) as server:
        codes = {"token": server.status(token), "none": server.status(None), "another": server.status("x" + token)}
        assert codes == {"token": 200, "none": 403, "another": 403}, codes
        addresses = listening(server.port)
        # Every interface: 0.0.0.0 (IPv4's any address) or :: (IPv6's), not loopback alone.
        assert set(addresses) & {"00000000", "0" * 32}, f"listening on {addresses}, not every interface"
        log = server.output()
        assert token not in log, "the log shows the token given in JUPYTER_TOKEN"
        # The image's overrides.json is what JupyterLab's settings say by default.
        _, settings = server.request("/lab/api/settings/@jupyterlab/apputils-extension:notification", token)
        news = {k: settings["schema"]["properties"][k]["default"] for k in ("fetchNews", "checkForUpdates")}
        assert news == {"fetchNews": "false", "checkForUpdates": False}, news
        version = re.search(r"Jupyter Server (\S+) is running", log)
    return (f"JupyterLab on every interface, port {server.port} (JUPYTER_PORT), Jupyter Server "
            f"{version.group(1) if version else '?'}: /api/status {codes['token']} with the token, "
            f"{codes['none']} without, {codes['another']} with another; the token is not in the log; no news fetched")


def check_generated() -> str:
    with Server(None, {"JUPYTER_TOKEN": ""}) as server:
        # Empty is "not given": the server must not start without a token.
        assert server.status(None) == 403, "no JUPYTER_TOKEN, and the server asks for none"
        found = re.search(rf"http://\S+:{server.port}/lab\?token=([0-9a-f]{{32,}})", server.output())
        assert found, "no URL with a token in the log:\n" + server.output()[-2000:]
        assert server.status(found.group(1)) == 200
    return f"without JUPYTER_TOKEN the server made a token ({len(found.group(1))} hex digits) and logged the URL with it"


def run_code(server: Server, token: str, kernel: str, code: str) -> str:
    """Execute code in a running kernel through the server's websocket, as JupyterLab does;
    the text/plain of its result."""
    import websocket  # websocket-client, which jupyter_server depends on

    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/api/kernels/{kernel}/channels",
                                     header=[f"Authorization: token {token}"], timeout=60)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "session": uuid.uuid4().hex, "username": "dlenv", "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "execute_result":
                return msg["content"]["data"]["text/plain"]
            if kind == "error":
                raise AssertionError(f"the kernel failed: {msg['content']['ename']}: {msg['content']['evalue']}")
        raise AssertionError("no result from the kernel within 60 s")
    finally:
        ws.close()


def check_kernel(who: str) -> str:
    token = secrets.token_hex(16)
    env = {"DLENV_UID": str(UID), "DLENV_GID": str(GID)} if who == "user" else {}
    uid = UID if who == "user" else 0
    name = f"dlenv-check-{secrets.token_hex(4)}.ipynb"
    path = os.path.join(WORKSPACE, name)
    with Server(token, env) as server:
        try:
            with open(f"/proc/{server.process.pid}/status") as f:
                real = int(re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1))
            assert real == uid, f"the server runs as uid {real}, not {uid}"
            code, _ = server.request(f"/api/contents/{name}", token, "PUT", {"type": "notebook"})
            assert code == 201, f"saving a notebook: HTTP {code}"
            assert os.stat(path).st_uid == uid, f"{path} belongs to uid {os.stat(path).st_uid}, not {uid}"
            # Opening the notebook: a session with a kernel in the notebook's folder.
            code, session = server.request("/api/sessions", token, "POST",
                                           {"path": name, "type": "notebook", "kernel": {"name": "python3"}})
            assert code == 201 and session, f"starting a kernel: HTTP {code}"
            result = run_code(server, token, session["kernel"]["id"],
                              "import os, sys\n(1 + 1, os.getuid(), sys.prefix, os.getcwd())")
            server.request(f"/api/sessions/{session['id']}", token, "DELETE")
        finally:
            if os.path.exists(path):
                os.remove(path)
    assert result == f"(2, {uid}, '/opt/venv', '{WORKSPACE}')", result
    return f"as {who} (uid {uid}): notebook saved to {path} as its own, the kernel said {result}"


def main(argv: list[str]) -> int:
    what = argv[1:]
    if what == ["token"]:
        print(check_token())
    elif what == ["generated"]:
        print(check_generated())
    elif len(what) == 2 and what[0] == "kernel" and what[1] in ("root", "user"):
        print(check_kernel(what[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
