"""Proxies and an extra CA bundle: from the command line or matrix.yaml over the environment,
into build args (both spellings) and this process's environment, loopback kept direct."""

from __future__ import annotations

import os

import pytest

from dlenv import graph, hostconf
from dlenv.errors import DlenvError

CERT = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n"


@pytest.fixture
def clean_env(monkeypatch):
    for name in hostconf.PROXY_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    return monkeypatch


def test_given_proxies_become_build_args_and_this_process_environment(clean_env):
    args = dict(hostconf.use_network("http://p.invalid:3128", "http://p.invalid:3128", "mirror.invalid", None))
    assert args["HTTP_PROXY"] == args["http_proxy"] == "http://p.invalid:3128"
    assert args["NO_PROXY"] == args["no_proxy"] == "mirror.invalid"
    assert os.environ["HTTPS_PROXY"] == "http://p.invalid:3128"
    # The local registry stays direct for dlenv's own requests.
    assert os.environ["NO_PROXY"].split(",") == ["mirror.invalid", "127.0.0.1", "localhost", "::1"]


def test_the_environment_is_the_default_and_nothing_means_nothing(clean_env):
    assert hostconf.use_network(None, None, None, None) == ()
    clean_env.setenv("https_proxy", "http://env.invalid:8080")
    assert dict(hostconf.use_network(None, None, None, None))["HTTPS_PROXY"] == "http://env.invalid:8080"
    assert dict(hostconf.use_network(None, "http://flag.invalid:1", None, None))["HTTPS_PROXY"] == "http://flag.invalid:1"


def test_an_extra_ca_bundle_is_added_to_the_hosts_for_pip_and_checks(clean_env, tmp_path):
    extra = tmp_path / "proxy-ca.pem"
    extra.write_text(CERT)
    host = hostconf.ca_bundle()
    hostconf.use_network(None, None, None, extra)
    combined = hostconf.ca_bundle()
    assert combined != host and combined.read_text().endswith(CERT)
    if host:
        assert combined.read_text().startswith(host.read_text())


def test_an_extra_ca_bundle_that_is_no_pem_is_refused(clean_env, tmp_path):
    bad = tmp_path / "key.txt"
    bad.write_text("not a certificate")
    with pytest.raises(DlenvError, match="no PEM certificate"):
        hostconf.use_network(None, None, None, bad)


def test_proxies_reach_every_bake_target_as_predefined_args(project):
    from helpers import MIRRORS, expand

    mirrors = MIRRORS.__class__(**{**MIRRORS.__dict__, "proxies": (("HTTPS_PROXY", "http://p.invalid:3128"),
                                                                   ("https_proxy", "http://p.invalid:3128"))})
    p = expand(project, mirrors=mirrors)
    targets = graph.definition(p)["target"]
    assert all(t["args"]["https_proxy"] == "http://p.invalid:3128" for t in targets.values())
