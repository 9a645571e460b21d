import json

import pytest

from plugin.errors import CniError
from plugin.server import serve_one
from plugin.spec import Attachment, add_result, parse_args, parse_request

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p", "CNI_PATH": "/opt"}
CONF = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "calico-lite"})


def test_request_parsed_with_pod_identity():
    r = parse_request(ENV, CONF)
    assert (r.command, r.container_id, r.ifname, r.cni_version) == ("ADD", "c1", "eth0", "1.0.0")
    assert r.pod == ("ns", "p")


@pytest.mark.parametrize("env,conf,code,text", [
    ({**ENV, "CNI_COMMAND": "FOO"}, CONF, 4, "CNI_COMMAND 'FOO'"),
    ({k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, CONF, 4, "CNI_CONTAINERID"),
    ({**ENV, "CNI_NETNS": ""}, CONF, 4, "CNI_NETNS"),
    (ENV, "{not json", 6, "not valid JSON"),
    (ENV, json.dumps({"name": "n"}), 7, "no cniVersion"),
    (ENV, json.dumps({"cniVersion": "9.9.9"}), 1, "'9.9.9' is not supported"),
    (ENV, json.dumps({"cniVersion": "1.0.0", "mtu": "big"}), 7, "mtu"),
    ({**ENV, "CNI_ARGS": "novalue"}, CONF, 4, "CNI_ARGS"),
])
def test_bad_requests_get_the_spec_code_and_say_what(env, conf, code, text):
    with pytest.raises(CniError) as e:
        parse_request(env, conf)
    assert e.value.code == code and text in e.value.msg


def test_del_needs_no_netns():
    r = parse_request({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}, CONF)
    assert r.netns == ""


def test_parse_args():
    assert parse_args("IgnoreUnknown=1;A=b=c") == {"IgnoreUnknown": "1", "A": "b=c"}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_result_layout_per_version(version):
    r = add_result(version, Attachment("caliX", "ee:ee:ee:ee:ee:ee", "eth0", "aa:bb:cc:dd:ee:ff",
                                       "/var/run/netns/p", "10.244.0.5", mtu=1450))
    assert r["cniVersion"] == version
    assert r["ips"][0]["address"] == "10.244.0.5/32" and r["ips"][0]["interface"] == 1
    assert ("version" in r["ips"][0]) == version.startswith("0.")
    assert r["interfaces"][1]["sandbox"] == "/var/run/netns/p"
    assert ("mtu" in r["interfaces"][1]) == (version == "1.1.0")
    assert r["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]


def _frame(env, stdin):
    return json.dumps({"env": env, "stdin": stdin}).encode()


def test_edge_turns_errors_into_spec_json_never_a_traceback():
    def boom(req):
        raise RuntimeError("kaboom")
    code, out, fields = serve_one(_frame(ENV, CONF), boom)
    err = json.loads(out)
    assert code == 1 and err["code"] == 199 and "kaboom" in err["msg"]
    assert err["cniVersion"] == "1.0.0" and "Traceback" not in out


def test_edge_reports_malformed_frames_with_code_6():
    code, out, _ = serve_one(b"garbage", lambda r: None)
    assert code == 1 and json.loads(out)["code"] == 6


def test_edge_passes_results_through():
    code, out, fields = serve_one(_frame(ENV, CONF), lambda r: {"cniVersion": "1.0.0", "ips": []})
    assert code == 0 and json.loads(out)["ips"] == [] and fields["result"] == "ok"
    code, out, _ = serve_one(_frame({**ENV, "CNI_COMMAND": "DEL"}, CONF), lambda r: None)
    assert code == 0 and out == ""
