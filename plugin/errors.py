"""CNI errors: raised anywhere below the verbs, turned into spec JSON only at the edge."""
from __future__ import annotations

# Codes the CNI spec defines (SPEC.md, "Error"); 100+ are ours.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_READY = 50
LIMITED_CONNECTIVITY = 51
NO_ADDRESS = 100  # ours: the pools have no free address


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg,
                "details": self.details}
