"""Instance generators: model presets, the edge network model, routing generators.

    >>> import jax, slimjax
    >>> batch = slimjax.generate.instances(jax.random.key(0), 256, model="mixtral_8x7b",
    ...                                    network={"servers": 4}, routing="latent")

Units: latency, fallback and base in seconds; size and capacity in bytes. Every default and
its unit is documented in ``docs/generators.md``.
"""

from slimjax.generate._from_trace import instance_from_trace
from slimjax.generate._instances import instance, instances, resolve, resolve_dtype, sample_fields
from slimjax.generate._locality import (
    LOCALITY_PRESETS,
    LocalityConfig,
    as_locality_config,
    locality_tokens,
    locality_trace,
    reuse_rates,
)
from slimjax.generate._models import MODELS, ModelPreset, get_model, model_names
from slimjax.generate._network import (
    Network,
    NetworkConfig,
    as_network_config,
    sample_network,
    shannon_rate,
    uniform_pool,
)
from slimjax.generate._routing import (
    ROUTING_KINDS,
    RoutingConfig,
    as_routing_config,
    gumbel,
    latent_logits,
    routing_shapes,
    sample_routing,
    top_k_indices,
)

__all__ = [
    "LOCALITY_PRESETS",
    "MODELS",
    "ROUTING_KINDS",
    "LocalityConfig",
    "ModelPreset",
    "Network",
    "NetworkConfig",
    "RoutingConfig",
    "as_locality_config",
    "as_network_config",
    "as_routing_config",
    "get_model",
    "gumbel",
    "instance",
    "instance_from_trace",
    "instances",
    "latent_logits",
    "locality_tokens",
    "locality_trace",
    "model_names",
    "resolve",
    "resolve_dtype",
    "reuse_rates",
    "routing_shapes",
    "sample_fields",
    "sample_network",
    "sample_routing",
    "shannon_rate",
    "top_k_indices",
    "uniform_pool",
]
