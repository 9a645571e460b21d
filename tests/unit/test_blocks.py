import pytest

from calico_lite.blocks import Block, IpamError, Pool, handle_id, pool_containing


def test_pool_splits_into_blocks_in_address_order():
    p = Pool("p", "10.244.0.0/24", block_size=26)
    assert list(p.block_cidrs()) == ["10.244.0.0/26", "10.244.0.64/26", "10.244.0.128/26",
                                     "10.244.0.192/26"]


@pytest.mark.parametrize("kw,msg", [
    ({"cidr": "10.244.0.1/16"}, "host bits"),
    ({"cidr": "10.244.0.0/16", "block_size": 12}, "blockSize 12"),
    ({"cidr": "10.244.0.0/16", "block_size": 33}, "blockSize 33"),
    ({"cidr": "10.244.0.0/16", "encapsulation": "gre"}, "encapsulation 'gre'"),
    ({"cidr": "10.244.0.0/16", "encap_mode": "Sometimes"}, "mode 'Sometimes'"),
])
def test_pool_validation_names_the_field(kw, msg):
    with pytest.raises(IpamError, match=msg):
        Pool("bad", **kw)


def test_pool_round_trips_through_dict():
    p = Pool("p", "10.1.0.0/16", 28, "vxlan", "CrossSubnet", True, False)
    assert Pool.from_dict(p.to_dict()) == p


def test_block_hands_out_lowest_free_offset_and_fills_up():
    b = Block("10.244.0.64/30", "n1", "p")
    seen = []
    while (off := b.free_offset()) is not None:
        b.allocations[off] = f"h{off}"
        seen.append(b.address(off))
    assert seen == ["10.244.0.64", "10.244.0.65", "10.244.0.66", "10.244.0.67"]
    del b.allocations[1]
    assert b.free_offset() == 1


def test_block_offset_and_address_are_inverse_and_checked():
    b = Block("10.244.1.0/26", "n1", "p")
    assert b.offset("10.244.1.37") == 37 and b.address(37) == "10.244.1.37"
    with pytest.raises(IpamError, match="not in block"):
        b.offset("10.244.2.1")
    with pytest.raises(IpamError, match="outside block"):
        b.address(64)


def test_block_round_trip_keeps_integer_offsets():
    b = Block("10.244.0.0/26", "n1", "p", {3: "c/eth0"})
    again = Block.from_dict(b.to_dict())
    assert again.allocations == {3: "c/eth0"} and again.affinity == "n1"


def test_handle_and_pool_lookup():
    assert handle_id("abc", "eth0") == "abc/eth0"
    pools = [Pool("a", "10.1.0.0/16"), Pool("b", "10.2.0.0/16")]
    assert pool_containing(pools, "10.2.3.4").name == "b"
    assert pool_containing(pools, "10.3.0.1") is None
