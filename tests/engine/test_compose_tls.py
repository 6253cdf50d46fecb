"""Run-time trust, against the real engine: in a container started from the file `dlenv compose`
wrote, behind a real TLS-intercepting proxy with its own throw-away CA, pip, uv and Python's ssl
reach a package index with --ca-bundle, and pip fails cleanly without it; `docker compose down`
stops everything `up` started. Nothing leaves the machine: the index is the test's own, over HTTPS."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess

import pytest
import yaml
from tlsproxy import InterceptingProxy, PackageIndex, make_ca, mint, wheel

from dlenv import compose, engine
from helpers import REGISTRY, RUN, TINY, dlenv, new_project

BUILD = "tls"
TAG = f"13.0.2-base-debian12-py-{BUILD}"   # the immutable tag of its one variant
INDEX_HOST = "pypi.dlenv.test"            # resolved by nobody but the proxy
PROJECT = "dlenv-probe"


@pytest.fixture(scope="module")
def python_family(docker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls-family")
    project = new_project(tmp / "project", TINY.format(registry=REGISTRY, repository=f"test/compose-tls-{RUN}",
                                                                  stacks="  - [python]"))
    out = dlenv(project, "build", "--build-id", BUILD, "--no-promote", "--workdir", str(tmp / "work"))
    assert out.returncode == 0, out.stderr[-3000:]
    return project / "matrix.yaml"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_pip_behind_a_tls_intercepting_proxy_works_with_the_ca_bundle_and_fails_cleanly_without(
        docker, python_family, tmp_path):
    gateway = docker.network.inspect("bridge").ipam.config[0]["Gateway"]   # the host, as containers see it
    proxy_ca, upstream_ca = make_ca(tmp_path, "dlenv-test-proxy-ca"), make_ca(tmp_path, "dlenv-test-index-ca")
    mark = secrets.token_hex(8)
    probe = wheel(PROJECT, "1.0", "dlenv_probe", f"MARK = {mark!r}\n")
    index = PackageIndex(mint(tmp_path, upstream_ca, "IP:127.0.0.1"), {PROJECT: probe})
    proxy = InterceptingProxy(gateway, proxy_ca, tmp_path, {INDEX_HOST: ("127.0.0.1", index.port)}, upstream_ca[0])
    url = f"https://{INDEX_HOST}:{index.port}/simple"
    name = f"dlenv-tls-{RUN}"
    compose_file = tmp_path / "docker-compose.yaml"
    ssh_port, web_port = _free_ports(2)
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 test@dlenv\n")
    # The proxy reaches the container only through the environment of `docker compose up`.
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")}
    env.update(DOCKER_HOST=engine.find()[0], HTTPS_PROXY=f"http://{gateway}:{proxy.port}")
    docker_compose = ["docker", "compose", "-f", str(compose_file)]

    def up(*extra: str) -> None:
        # From a folder of its own: a bare tag of a matrix elsewhere.
        out = dlenv(tmp_path, "compose", TAG, "--matrix", str(python_family), "-o", str(compose_file),
                    "--name", name, "--gpus", "none", "--host-ip", "127.0.0.1", "--ssh-port", str(ssh_port),
                    "--web-port", str(web_port), "--models", str(tmp_path / "models"), "--code", str(tmp_path / "code"),
                    "--cache", str(tmp_path / "cache"), "--ssh-key", str(key), *extra)
        assert out.returncode == 0, out.stderr
        started = subprocess.run([*docker_compose, "up", "-d", "--wait"], capture_output=True, text=True, env=env,
                                 timeout=600)
        assert started.returncode == 0, started.stderr

    def run(script: str) -> subprocess.CompletedProcess:
        return subprocess.run([*docker_compose, "exec", "-T", name, "sh", "-c", script], capture_output=True,
                              text=True, env=env, timeout=300)

    pip = f"pip install --no-cache-dir --retries 0 --timeout 30 --index-url {url} {PROJECT}"
    try:
        up()
        without = run(pip)
        output = without.stdout + without.stderr
        assert without.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in output, output
        assert "Traceback" not in output
        assert run("python -c 'import dlenv_probe'").returncode != 0
        assert not index.requests   # refused at the handshake: nothing reached the index
        assert ("REFUSED" in {kind for kind, *_ in proxy.log}), proxy.log

        up("--ca-bundle", str(proxy_ca[0]))
        target = yaml.safe_load(compose_file.read_text())["services"][name]["environment"]["PIP_CERT"]
        assert target == compose.CA_TARGET and run(f"cat {target}").stdout == proxy_ca[0].read_text()
        mounted = run(f"grep ' {target} ' /proc/mounts").stdout.split()
        assert mounted[3].split(",")[0] == "ro", mounted
        installed = run(f"{pip} && python -c 'import dlenv_probe; print(dlenv_probe.MARK)'")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert installed.stdout.split()[-1] == mark
        # uv and Python's own ssl read SSL_CERT_FILE.
        uv = run(f"uv pip install --no-cache --reinstall --index-url {url} {PROJECT}")
        assert uv.returncode == 0, uv.stderr
        opened = run(f"python -c \"import urllib.request; print(urllib.request.urlopen('{url}/{PROJECT}/').status)\"")
        assert opened.stdout.split() == ["200"], opened.stderr
    finally:
        down = subprocess.run([*docker_compose, "down"], capture_output=True, text=True, env=env, timeout=300)
        proxy.shutdown()
        index.shutdown()
    assert down.returncode == 0, down.stderr
    # `down`, without a profile or a service name, took everything `up` started.
    assert not docker.container.list(all=True, filters=[("label", f"com.docker.compose.project={name}")])
    # Every request went through the proxy, which terminated TLS with the certificate it minted.
    kinds = {kind for kind, *_ in proxy.log}
    assert {"CONNECT", "INTERCEPTED", "GET"} <= kinds
    assert {target for kind, _, target in proxy.log if kind == "CONNECT"} == {f"{INDEX_HOST}:{index.port}"}
    assert f"/files/{probe[0]}" in index.requests
