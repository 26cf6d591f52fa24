"""The instances of a run: generated from the config, built from a trace, or read from a file.

A :class:`BatchSource` hands out rows ``[lo, hi)`` of the run's batch, so that a run too large for
memory is generated chunk by chunk. Row i depends only on the seed and i, never on the chunking:
generated rows use ``jax.random.split(key, batch_size)[i]``, exactly what
:func:`slimjax.generate.instances` uses, so any chunk equals the same rows of the whole batch.
"""

from __future__ import annotations

import functools
import os
from functools import partial
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from slimjax.app._config import plain

__all__ = ["BatchSource", "make_batch"]


def _network(cfg: DictConfig) -> dict:
    return {k: v for k, v in (plain(cfg.network) or {}).items() if k != "name"}


@functools.lru_cache(maxsize=16)
def _sampler(model, network, routing, dtype):
    """``sample_fields`` vmapped over a vector of keys, jitted once per configuration."""
    import jax

    from slimjax.generate import sample_fields

    return jax.jit(jax.vmap(partial(sample_fields, model=model, network=network, routing=routing, dtype=dtype)))


class BatchSource:
    """The run's batch, row range by row range.

    Attributes:
      size: number of instances of the run (``batch_size``, or the file's batch).
      shape: ``(U, N, L, E, M, K)`` of one instance.
      kind: ``"generated"``, ``"trace"`` or ``"file"``.
      extra: ``{"tokens": int [T, L, K], "trace": name}`` for a trace (held-out tokens to replay).
    """

    def __init__(self, cfg: DictConfig, key):
        import jax
        import jax.numpy as jnp

        self.dtype = jnp.float64 if cfg.precision == "float64" else jnp.float32
        self.extra: dict[str, Any] = {}
        path = OmegaConf.select(cfg, "instance.path")
        routing = plain(cfg.routing) or {}
        if path is not None:
            self.kind = "file"
            self._file(str(path))
        elif routing.get("kind") == "trace":
            self.kind = "trace"
            self.size = int(cfg.batch_size)
            self._trace(key, plain(cfg.model), _network(cfg), routing)
        else:
            from slimjax.generate import resolve

            self.kind = "generated"
            self.size = int(cfg.batch_size)
            self._conf = resolve(plain(cfg.model), _network(cfg), routing)
            self._keys = jax.random.split(key, self.size)
            self.shape = self.rows(0, 1).shape

    # -- the three kinds --------------------------------------------------------------------------
    def _file(self, path: str) -> None:
        from slimjax._instance import Instance
        from slimjax._io import load

        inst = load(os.path.expanduser(path))
        if not isinstance(inst, Instance):
            raise ValueError(f"instance.path: {path} holds a {type(inst).__name__}, not an Instance")
        if not inst.batch_shape:
            inst = _expand(inst)
        self._all = inst.astype(self.dtype)
        self.size = inst.batch_shape[0]
        self.shape = inst.shape

    def _trace(self, key, model: dict, network: dict, routing: dict) -> None:
        import jax

        from slimjax import traces

        path = routing.get("path")
        if not path:
            raise ValueError("routing.path: routing=trace needs a trace file (routing.path=/path/to/trace.npz)")
        path = os.path.expanduser(str(path))
        trace = traces.load(path, **dict(routing.get("load_options") or {}))
        self._train, test = traces.split(
            trace,
            float(routing.get("train_fraction", 0.5)),
            by=str(routing.get("split_by", "token")),
            seed=routing.get("split_seed", 0),
        )
        self._model, self._net, self._merge = model, network, bool(routing.get("merge", True))
        self._keys = jax.random.split(key, self.size)
        first = self.rows(0, 1)
        tokens = np.asarray(test.expert_ids)
        if first.shape[0] > 1 and test.user is not None:  # several users: replay user 0's held-out tokens
            tokens = tokens[np.asarray(test.user) == 0]
        self.extra = {"tokens": tokens, "trace": os.path.basename(path)}
        self.shape = first.shape

    # -- rows ---------------------------------------------------------------------------------------
    def rows(self, lo: int, hi: int, pad_to: int | None = None):
        """Instances ``[lo, hi)`` of the run as a batch (validated); with ``pad_to``, the keys are
        padded by repeating the last row so that every chunk has one shape (one compilation) and
        the padding is cut off again."""
        import jax.numpy as jnp

        from slimjax._instance import Instance, stack

        if not 0 <= lo < hi <= self.size:
            raise ValueError(f"rows: need 0 <= lo < hi <= {self.size}, got [{lo}, {hi})")
        if self.kind == "file":
            return self._all[lo:hi]
        if self.kind == "trace":
            from slimjax import generate

            batch = stack([generate.instance_from_trace(self._train, model=self._model, network=self._net,
                                                        key=self._keys[i], merge=self._merge) for i in range(lo, hi)])
            return batch.astype(self.dtype)
        keys = self._keys[lo:hi]
        n = hi - lo
        if pad_to is not None and pad_to > n:
            keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad_to - n, axis=0)])
        # drawn in float32 and cast, so that precision=float64 solves the same instances
        fields = _sampler(*self._conf, jnp.float32)(keys)
        if keys.shape[0] != n:
            fields = {k: None if v is None else v[:n] for k, v in fields.items()}  # service/rate may be None
        batch = Instance(**fields)
        return batch if self.dtype == jnp.float32 else batch.astype(self.dtype)


def _expand(inst):
    import jax

    return jax.tree_util.tree_map(lambda a: a[None], inst)


def make_batch(cfg: DictConfig, key) -> tuple[Any, dict]:
    """The whole batch described by ``cfg`` (``model``/``network``/``routing``, or ``instance.path``).

    Returns:
      ``(batch, extra)``: an :class:`~slimjax.Instance` with leading axis ``batch_size`` and a
      dict with ``"tokens"`` (held-out expert ids [T, L, K] to replay) and ``"trace"`` (the trace's
      file name) when ``routing=trace``.
    """
    B = cfg.get("batch_size")
    if OmegaConf.select(cfg, "instance.path") is None and (isinstance(B, bool) or not isinstance(B, int) or B < 1):
        raise ValueError(f"batch_size: must be an integer >= 1, got {B!r}")
    src = BatchSource(cfg, key)
    return src.rows(0, src.size), src.extra
