"""Proxies and an extra CA bundle: from the command line or matrix.yaml over the environment,
into build args (both spellings) and the environment of what dlenv starts, loopback kept direct;
never written into dlenv's own environment."""

from __future__ import annotations

import dataclasses
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from dlenv import graph, hostconf, plan
from dlenv.errors import ConfigError
from dlenv.options import PlanRequest
from helpers import MIRRORS, REPO, expand

CERT = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n"


@pytest.fixture
def clean_env(monkeypatch):
    for name in hostconf.PROXY_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_given_proxies_become_build_args_and_child_environments(clean_env):
    net = hostconf.network("http://p.invalid:3128", "http://p.invalid:3128", "mirror.invalid", None)
    args = dict(net.proxies)
    assert args["HTTP_PROXY"] == args["http_proxy"] == "http://p.invalid:3128"
    # The local registry stays direct for dlenv's own requests.
    assert args["NO_PROXY"].split(",") == ["mirror.invalid", "127.0.0.1", "localhost", "::1"]
    assert net.env()["HTTPS_PROXY"] == "http://p.invalid:3128"
    assert "HTTPS_PROXY" not in os.environ


def test_nothing_means_nothing(clean_env):
    assert hostconf.network(None, None, None, None).proxies == ()


def test_loading_a_plan_leaves_the_environment_untouched(clean_env, tmp_path):
    extra = tmp_path / "proxy-ca.pem"
    extra.write_text(CERT)
    clean_env.setenv("https_proxy", "http://env.invalid:8080")
    before = dict(os.environ)
    request = PlanRequest(matrix=REPO / "tests" / "family.yaml", root=REPO, http_proxy="http://flag.invalid:1",
                          ca_bundle=extra)
    p = plan.load(request)
    assert dict(os.environ) == before
    proxies = dict(p.network.proxies)
    # Precedence: the flag over matrix.yaml over the environment.
    assert proxies["HTTP_PROXY"] == "http://flag.invalid:1"
    assert proxies["HTTPS_PROXY"] == "http://env.invalid:8080"
    assert p.network.env()["SSL_CERT_FILE"] == str(p.network.ca_file)


def test_an_extra_ca_bundle_is_added_to_the_hosts_for_pip_and_checks(clean_env, tmp_path):
    extra = tmp_path / "proxy-ca.pem"
    extra.write_text(CERT)
    host = hostconf.ca_bundle()
    combined = hostconf.network(None, None, None, extra).ca()
    assert combined != host and combined.read_text().endswith(CERT)
    if host:
        assert combined.read_text().startswith(host.read_text())


def test_an_extra_ca_bundle_that_is_no_pem_is_a_config_error_before_anything(clean_env, tmp_path):
    bad = tmp_path / "key.txt"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="--ca-bundle: proxy.ca_bundle"):
        plan.load(PlanRequest(matrix=REPO / "tests" / "family.yaml", root=REPO, ca_bundle=bad))


def test_requests_go_through_the_runs_proxy_and_loopback_stays_direct(clean_env):
    """A real HTTP server of the test on loopback, in the role of a proxy."""
    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self):   # noqa: N802 - http.server's name
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        net = hostconf.network(f"http://127.0.0.1:{port}", None, "", None)
        with net.urlopen("http://mirror.invalid/debian/", timeout=5) as response:
            assert response.status == 200
        assert seen == ["http://mirror.invalid/debian/"]   # an absolute URL: it came as a proxy request
        with net.urlopen(f"http://127.0.0.1:{port}/direct", timeout=5):
            pass
        assert seen[-1] == "/direct"                        # loopback: straight to the server
    finally:
        server.shutdown()


def test_proxies_reach_every_bake_target_as_predefined_args(project):
    net = hostconf.network(None, "http://p.invalid:3128", None, None)
    p = expand(project, mirrors=dataclasses.replace(MIRRORS, network=net))
    targets = graph.definition(p)["target"]
    assert all(t["args"]["https_proxy"] == "http://p.invalid:3128" for t in targets.values())
