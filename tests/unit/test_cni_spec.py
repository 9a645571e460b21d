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


# Found by the CNI fuzz (tests/faults/test_cni_fuzz.py): each was an internal error (code 199)
# or a netlink error after an address had been assigned; now a spec code before anything.
@pytest.mark.parametrize("env,conf,code,text", [
    (ENV, json.dumps({"cniVersion": "1.0.0", "mtu": 2**40}), 7, "out of range"),
    (ENV, json.dumps({"cniVersion": "1.0.0", "mtu": -5}), 7, "out of range"),
    (ENV, json.dumps({"cniVersion": "1.0.0", "mtu": True}), 7, "mtu"),
    ({**ENV, "CNI_IFNAME": "x" * 16}, CONF, 4, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "a/b"}, CONF, 4, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "eth 0"}, CONF, 4, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": ".."}, CONF, 4, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "é" * 8}, CONF, 4, "CNI_IFNAME"),
    ({**ENV, "CNI_CONTAINERID": "a/b"}, CONF, 4, "CNI_CONTAINERID"),
    ({**ENV, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "-x"}, CONF, 4, "CNI_CONTAINERID"),
])
def test_out_of_spec_values_are_refused_up_front(env, conf, code, text):
    with pytest.raises(CniError) as e:
        parse_request(env, conf)
    assert e.value.code == code and text in e.value.msg


def test_valid_names_and_mtus_pass():
    for ifname, mtu in (("eth0", 0), ("net1", 68), ("a" * 15, 65535), ("veth_1.2-x", 1400)):
        r = parse_request({**ENV, "CNI_IFNAME": ifname},
                          json.dumps({"cniVersion": "1.0.0", "mtu": mtu}))
        assert (r.ifname, r.mtu) == (ifname, mtu)


@pytest.mark.parametrize("prev", [[1], {"ips": "x"}, {"ips": [{}]}, {"ips": [{"address": 5}]}])
def test_check_with_a_malformed_prev_result_is_code_7(prev):
    from plugin.cni import prev_result_ips
    with pytest.raises(CniError) as e:
        prev_result_ips(prev)
    assert e.value.code == 7 and "prevResult" in e.value.msg


def test_an_error_answer_names_a_string_cni_version():
    for asked in (5, ["1.0.0"], {"a": 1}):
        code, out, _ = serve_one(json.dumps({"env": ENV, "stdin": json.dumps({"cniVersion": asked})}).encode(),
                                 lambda req: None)
        err = json.loads(out)
        assert code == 1 and err["code"] == 1 and err["cniVersion"] == "1.1.0"
