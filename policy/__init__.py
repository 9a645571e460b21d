"""NetworkPolicy enforcement with one nftables table (`inet calico-lite`).

Mechanism only: plain-data inputs (model), pure parsing/selection/compilation, and an applier
that writes the compiled table into the calling thread's network namespace.
"""
from .compiler import compile_ruleset, render_nft
from .manifests import PolicyError, parse_manifests, policy_to_dict
from .model import ContainerPort, Namespace, NetworkPolicy, Pod

__all__ = ["compile_ruleset", "render_nft", "parse_manifests", "policy_to_dict", "PolicyError",
           "ContainerPort", "Namespace", "NetworkPolicy", "Pod"]
