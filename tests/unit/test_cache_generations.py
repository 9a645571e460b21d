"""The cache's per-category generations: a controller wakes only for the keys it reads."""
from calico_lite import keys
from calico_lite.cache import Cache
from calico_lite.datastore import Change


def make() -> Cache:
    return Cache(ds=None)  # type: ignore[arg-type]  # apply_changes needs no datastore


def test_changes_bump_only_their_category():
    c = make()
    policy_inputs = (keys.ROOT + "k8s/", keys.WORKLOADS)
    c.apply_changes([Change(keys.handle("a/eth0"), {"ip": "10.0.0.1"}, 5)])
    assert c.generation == 1 and c.generation_of(policy_inputs) == 0
    assert c.generation_of((keys.HANDLES,)) == 1
    c.apply_changes([Change(keys.k8s_pod("x", "a"), {"labels": {}}, 6)])
    assert c.generation_of(policy_inputs) == 2 and c.revision == 6
    c.apply_changes([Change(keys.ROOT + "bgp/config", {}, 7)])  # unknown kinds wake only catch-alls
    assert c.generation == 3 and c.generation_of(policy_inputs) == 2


def test_status_reports_are_not_cached_and_wake_nobody():
    c = make()
    c.apply_changes([Change(keys.status("n1"), {"peers": []}, 3)])
    assert c.generation == 0 and c.items(keys.STATUS) == {}


def test_a_narrower_prefix_matches_its_category():
    c = make()
    c.apply_changes([Change(keys.k8s_pod("x", "a"), {}, 2)])
    assert c.generation_of((keys.K8S_PODS + "x/",)) == 1


def test_nudge_wakes_a_waiter_whose_until_turned_true():
    """The routing loop waits on the cache and on BGP changes at once: a BGP change sets
    its flag and nudges, and the waiter returns without any generation moving. The wait's
    own timeout is an hour, so only the nudge can end it (the join below guards a hang)."""
    import threading
    c = make()
    flag, returned = threading.Event(), []
    waiter = threading.Thread(target=lambda: returned.append(
        c.wait_change(c.generation, 3600, until=flag.is_set)), daemon=True)
    waiter.start()
    flag.set()
    c.nudge()
    waiter.join(timeout=60)
    assert returned == [0] and not waiter.is_alive()


def test_a_nudge_leaves_other_waiters_waiting():
    c = make()
    assert c.wait_change(c.generation, 0, until=lambda: False) == 0
    c.nudge()
    assert c.generation == 0 and c.generation_of((keys.HANDLES,)) == 0
