"""ExaBGP 5.x API lines captured from a real ExaBGP 5.0.15 against FRR 8.4, for the unit
tests of parsing (bgp.messages) and of the session state machine (bgp.session)."""

HEAD = ('{ "exabgp": "5.0.0", "time": 1795830833.7, "host" : "vm", "pid" : 5632, "ppid" : 5629, '
        '"counter": 1, ')
NEIGH = ('"neighbor": { "address": { "local": "10.99.1.11", "peer": "10.99.1.1" }, '
         '"asn": { "local": 64601, "peer": 65001 }, "router-id": "10.99.1.11" ')

UP = HEAD + '"type": "state", ' + NEIGH + ', "state": "up" } }'
DOWN = HEAD + '"type": "state", ' + NEIGH + ', "state": "down", "reason": "stop, message [shutting down]" } }'
ANNOUNCE = (HEAD + '"type": "update", ' + NEIGH + ', "direction": "receive", "message": { "update": '
            '{ "attribute": { "origin": "igp", "as-path": {"0": {"element": "as-sequence", '
            '"value": [65001, 64602]}} }, "announce": { "ipv4 unicast": { "10.99.1.12": '
            '[ { "nlri": "10.244.2.0/26" }, { "nlri": "10.244.3.0/26" } ] } } } } } }')
WITHDRAW = (HEAD + '"type": "update", ' + NEIGH + ', "direction": "receive", "message": { "update": '
            '{ "withdraw": { "ipv4 unicast": [ { "nlri": "10.244.2.0/26" } ] } } } } }')
EOR = (HEAD + '"type": "update", ' + NEIGH + ', "direction": "receive", "message": '
       '{ "eor": { "afi" : "ipv4", "safi" : "unicast" } } } }')
SHUTDOWN = HEAD + '"type": "notification", "notification": "shutdown" }'
