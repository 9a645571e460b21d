"""Rendering of ExaBGP config/env and FRR config (pure text)."""
from pathlib import Path

import pytest

from bgp.config import PROCESS_NAME, PeerConfig, SpeakerConfig, exabgp_env, render_config
from calico_lite.lab.frr import render_frr_config

CFG = SpeakerConfig(router_id="10.99.1.10", local_address="10.99.1.10", local_as=64601,
                    peers=[PeerConfig(address="10.99.1.1", peer_as=65001, hold_time=9),
                           PeerConfig(address="10.99.1.2", peer_as=65002, hold_time=3)])


def test_render_has_relay_process_and_one_block_per_peer():
    text = render_config(CFG, ["/venv/bin/python", "-I", "/x/relay.py", "/run/bgp/relay.sock"])
    assert f"process {PROCESS_NAME} {{" in text
    assert "run /venv/bin/python -I /x/relay.py /run/bgp/relay.sock;" in text
    assert "encoder json;" in text
    assert text.count("neighbor 10.99.1.1 {") == 1 and text.count("neighbor 10.99.1.2 {") == 1
    assert "peer-as 65002;" in text and "hold-time 3;" in text
    assert text.count("local-as 64601;") == 2
    assert text.count(f"processes [ {PROCESS_NAME} ];") == 2
    assert "neighbor-changes;" in text and "parsed;" in text
    assert text.count("{") == text.count("}")
    assert "passive" not in text


def test_render_rejects_unquotable_relay_path():
    with pytest.raises(ValueError, match="cannot be written"):
        render_config(CFG, ["/path with space/python"])


def test_config_validation():
    with pytest.raises(ValueError, match="router_id"):
        SpeakerConfig(router_id="x", local_address="10.0.0.1", local_as=1)
    with pytest.raises(ValueError, match="twice"):
        SpeakerConfig(router_id="10.0.0.1", local_address="10.0.0.1", local_as=1,
                      peers=[PeerConfig("10.0.0.2", 2), PeerConfig("10.0.0.2", 2)])
    with pytest.raises(ValueError, match="needs listen"):
        SpeakerConfig(router_id="10.0.0.1", local_address="10.0.0.1", local_as=1,
                      peers=[PeerConfig("10.0.0.2", 2, passive=True)])
    with pytest.raises(ValueError, match="hold_time"):
        SpeakerConfig(router_id="10.0.0.1", local_address="10.0.0.1", local_as=1,
                      peers=[PeerConfig("10.0.0.2", 2, hold_time=2)])


def test_env_listen_off_binds_nothing_and_never_drops_privileges():
    env = exabgp_env(CFG, Path("/run/bgp"))
    assert env["exabgp_tcp_bind"] == ""
    assert env["exabgp_daemon_user"] == "root" and env["exabgp_daemon_drop"] == "false"
    assert env["exabgp_api_cli"] == "false" and env["exabgp_api_ack"] == "true"
    assert env["exabgp_log_destination"] == "/run/bgp/exabgp.log"


def test_env_listen_on_binds_local_address():
    cfg = SpeakerConfig(router_id="10.99.1.10", local_address="10.99.1.10", local_as=64512,
                        peers=[PeerConfig("10.99.1.11", 64512)], listen=True)
    env = exabgp_env(cfg, Path("/w"), log_to_file=False)
    assert env["exabgp_tcp_bind"] == "10.99.1.10" and env["exabgp_tcp_port"] == "179"
    assert env["exabgp_log_destination"] == "stderr"


def test_frr_dynamic_neighbours_declared_before_listen_range():
    text = render_frr_config("tor1", 65001, "10.99.1.1", neighbors=[("10.99.9.1", 65100)],
                             listen_ranges=[("10.99.1.0/24", "external"), ("10.99.3.0/24", 65001)],
                             redistribute_connected=True)
    lines = [l.strip() for l in text.splitlines()]
    i_group = lines.index("neighbor NODES peer-group")
    i_remote = lines.index("neighbor NODES remote-as external")
    i_listen = lines.index("bgp listen range 10.99.1.0/24 peer-group NODES")
    assert i_group < i_remote < i_listen
    assert lines.index("neighbor NODES2 remote-as 65001") < lines.index(
        "bgp listen range 10.99.3.0/24 peer-group NODES2")
    assert "no bgp ebgp-requires-policy" in lines and "no bgp network import-check" in lines
    assert "bgp bestpath as-path multipath-relax" in lines
    assert "maximum-paths 8" in lines and "redistribute connected" in lines
    assert "neighbor 10.99.9.1 remote-as 65100" in lines
    assert "neighbor NODES2 route-reflector-client" in lines  # iBGP range: reflect
    assert "neighbor NODES route-reflector-client" not in lines
    assert lines[-1] == "end"


def test_frr_minimal():
    text = render_frr_config("spine", 65100, "10.99.9.9", neighbors=[], listen_ranges=[],
                             redistribute_connected=False, maximum_paths=1, multipath_relax=False)
    assert "redistribute connected" not in text and "maximum-paths" not in text
    assert "multipath-relax" not in text and "listen range" not in text
