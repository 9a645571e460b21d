from policy.model import LabelSelector, LabelSelectorRequirement as Req, Namespace
from policy.label_selector import format_selector, selector_matches


def sel(labels=None, *exprs):
    return LabelSelector.of(labels or {}, list(exprs))


def test_empty_selector_matches_everything():
    assert selector_matches(sel(), {})
    assert selector_matches(sel(), {"a": "b"})


def test_match_labels_all_must_hold():
    s = sel({"app": "web", "tier": "fe"})
    assert selector_matches(s, {"app": "web", "tier": "fe", "x": "y"})
    assert not selector_matches(s, {"app": "web"})
    assert not selector_matches(s, {"app": "web", "tier": "be"})


def test_in_and_not_in():
    assert selector_matches(sel(None, Req("env", "In", ("a", "b"))), {"env": "b"})
    assert not selector_matches(sel(None, Req("env", "In", ("a", "b"))), {"env": "c"})
    assert not selector_matches(sel(None, Req("env", "In", ("a",))), {})
    assert selector_matches(sel(None, Req("env", "NotIn", ("a",))), {"env": "c"})
    assert selector_matches(sel(None, Req("env", "NotIn", ("a",))), {}), "NotIn matches a missing key"
    assert not selector_matches(sel(None, Req("env", "NotIn", ("a",))), {"env": "a"})


def test_exists_and_does_not_exist():
    assert selector_matches(sel(None, Req("k", "Exists")), {"k": ""})
    assert not selector_matches(sel(None, Req("k", "Exists")), {})
    assert selector_matches(sel(None, Req("k", "DoesNotExist")), {})
    assert not selector_matches(sel(None, Req("k", "DoesNotExist")), {"k": "v"})


def test_labels_and_expressions_combine():
    s = sel({"app": "web"}, Req("env", "NotIn", ("prod",)))
    assert selector_matches(s, {"app": "web", "env": "dev"})
    assert not selector_matches(s, {"app": "web", "env": "prod"})
    assert not selector_matches(s, {"env": "dev"})


def test_namespace_carries_its_name_label():
    ns = Namespace("team-a", {"x": "y"})
    assert ns.labels == {"x": "y", "kubernetes.io/metadata.name": "team-a"}
    assert selector_matches(sel({"kubernetes.io/metadata.name": "team-a"}), ns.labels)
    assert Namespace("b", {"kubernetes.io/metadata.name": "b"}).labels == {"kubernetes.io/metadata.name": "b"}


def test_format_selector():
    assert format_selector(sel()) == "<all>"
    assert format_selector(sel({"a": "b"}, Req("c", "In", ("d", "e")), Req("f", "Exists"))) == "a=b,c in (d,e),f"
