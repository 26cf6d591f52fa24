"""Record the routing of a Hugging Face transformers MoE model as a canonical :class:`Trace`.

Forward hooks on the router ("gate") modules of every MoE layer capture, for each token, the
top-K expert ids the router chose (the router's own index output when it returns one — newer
transformers routers return ``(logits, weights, indices)`` — else ``top_k`` of the router logits,
which is the same choice for softmax-then-top-K routers). Works for Mixtral, Qwen2-MoE /
Qwen3-MoE, OLMoE and DeepSeek-V2 style models (``mlp.gate`` / ``block_sparse_moe.gate``).

Texts are run one at a time (no padding), so every recorded token is real; a text's tokens get
its index as ``request`` id. With ``max_new_tokens`` the model also generates tokens greedily and
their routing is recorded (prefill first, then one row per decode step).

torch and transformers (the ``traces`` extra: ``pip install 'slimjax[traces]'``) are imported
only when a function here runs.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from slimjax.traces._trace import Trace

__all__ = ["find_routers", "main", "model_experts", "record", "tiny_model"]

_CLI_DOC = """Record routing traces of a Hugging Face transformers MoE model in slimjax's canonical .npz.

    python scripts/record_traces.py --model allenai/OLMoE-1B-7B-0924 --text prompts.txt --out olmoe.npz
    python scripts/record_traces.py --tiny mixtral --prompt "hello world" --out tiny.npz   # no download
"""


def _require():
    """``(torch, transformers)``, or an ImportError that names the ``traces`` extra."""
    try:
        import torch
        import transformers
    except ImportError as err:
        raise ImportError(
            f"recording traces needs torch and transformers, the 'traces' extra of slimjax "
            f"(pip install 'slimjax[traces]'): {err}"
        ) from err
    return torch, transformers


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def _config_value(config: Any, *names: str) -> int | None:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def model_experts(model: Any) -> tuple[int, int]:
    """(E routed experts, top-K) from the model's config."""
    cfg = model.config
    E = _config_value(cfg, "num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts")
    K = _config_value(cfg, "num_experts_per_tok", "moe_top_k", "top_k")
    if E is None or K is None:
        raise ValueError("model: its config names neither the number of experts nor top-K; not a MoE model?")
    return E, K


def find_routers(model: Any) -> list[tuple[int, str, Any]]:
    """The router modules of a MoE model: ``[(layer index, module name, module)]`` sorted by layer.

    A router is a submodule named ``gate`` (not ``gate_proj``/``shared_expert_gate``) whose weight
    has E output rows, E = the model's number of routed experts.
    """
    E, _ = model_experts(model)
    out = []
    for name, mod in model.named_modules():
        if name.split(".")[-1] != "gate":
            continue
        w = getattr(mod, "weight", None)
        if w is None or w.ndim != 2 or w.shape[0] != E:
            continue
        m = _LAYER_RE.search(name)
        if m is None:
            raise ValueError(f"router {name}: cannot tell its layer index from the module name")
        out.append((int(m.group(1)), name, mod))
    if not out:
        raise ValueError("model: no router ('gate' with E outputs) found; unsupported MoE architecture")
    return sorted(out, key=lambda t: t[0])


def _indices_from_output(output: Any, E: int, K: int):
    """Top-K expert ids [tokens, K] from a router's forward output."""
    torch = _require()[0]

    items = list(output) if isinstance(output, (tuple, list)) else [output]
    for t in items:  # the router's own choice, when it returns indices
        if isinstance(t, torch.Tensor) and not t.is_floating_point() and t.shape[-1] == K:
            return t.reshape(-1, K)
    for t in items:  # else top-K of the logits
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.shape[-1] == E:
            return torch.topk(t.reshape(-1, E).float(), K, dim=-1).indices
    raise ValueError(f"router output: found neither indices [..., K={K}] nor logits [..., E={E}]")


def record(
    model: Any,
    inputs: Iterable[Sequence[int] | Any],
    *,
    max_new_tokens: int = 0,
    source: str = "",
    tasks: Sequence[int] | None = None,
) -> Trace:
    """Run ``model`` over each input (token ids) and return the routing as a Trace.

    Args:
      model: a transformers MoE model (``...ForCausalLM`` or base model), eval mode recommended.
      inputs: token id sequences, one per request (1-D lists/arrays/tensors).
      max_new_tokens: also generate this many tokens greedily per input (needs ``generate``).
      source: text stored in the trace.
      tasks: optional task id per input.

    Returns:
      :class:`~slimjax.traces.Trace` with ``expert_ids`` [T, L, K] (T = all prompt tokens plus all
      generated tokens that went through the model), ``layers`` = the MoE layers' indices,
      ``request`` = the input's index (and ``task`` when given).
    """
    torch = _require()[0]
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must be an integer >= 0, got {max_new_tokens!r}")
    E, K = model_experts(model)
    routers = find_routers(model)
    buffers: dict[int, list] = {lay: [] for lay, _, _ in routers}
    handles = []
    for lay, _, mod in routers:
        def hook(_mod, _inp, output, lay=lay):
            buffers[lay].append(_indices_from_output(output, E, K).detach().cpu().numpy())

        handles.append(mod.register_forward_hook(hook))
    request: list[int] = []
    try:
        with torch.no_grad():
            for r, ids in enumerate(inputs):
                ids = torch.as_tensor(np.asarray(ids), dtype=torch.long).reshape(1, -1)
                if ids.shape[1] == 0:
                    raise ValueError(f"inputs[{r}]: empty token sequence")
                device = next(model.parameters()).device
                ids = ids.to(device)
                before = sum(x.shape[0] for x in buffers[routers[0][0]])
                if max_new_tokens > 0:
                    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
                else:
                    model(input_ids=ids)
                after = sum(x.shape[0] for x in buffers[routers[0][0]])
                request += [r] * (after - before)
    finally:
        for h in handles:
            h.remove()
    per_layer = [np.concatenate(buffers[lay]) if buffers[lay] else np.zeros((0, K), int) for lay, _, _ in routers]
    T = per_layer[0].shape[0]
    for (lay, name, _), a in zip(routers, per_layer):
        if a.shape[0] != T:
            raise ValueError(f"router {name}: recorded {a.shape[0]} tokens, the first router {T}")
    ids = np.stack(per_layer, axis=1)  # [T, L, K]
    task = None if tasks is None else np.asarray(tasks, np.int64)[np.asarray(request, np.int64)]
    return Trace(ids, E, layers=np.array([lay for lay, _, _ in routers]), task=task,
                 request=np.asarray(request, np.int64), source=source)


def tiny_model(kind: str = "mixtral", *, seed: int = 0, layers: int = 2, experts: int = 4, top_k: int = 2):
    """A tiny randomly initialised MoE causal LM built from a config (no download)."""
    torch, tf = _require()

    torch.manual_seed(seed)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, num_experts_per_tok=top_k)
    if kind == "mixtral":
        cfg = tf.MixtralConfig(num_local_experts=experts, **common)
        model = tf.MixtralForCausalLM(cfg)
    elif kind == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(num_experts=experts, moe_intermediate_size=16, shared_expert_intermediate_size=32,
                                **common)
        model = tf.Qwen2MoeForCausalLM(cfg)
    elif kind == "olmoe":
        cfg = tf.OlmoeConfig(num_experts=experts, **common)
        model = tf.OlmoeForCausalLM(cfg)
    elif kind == "deepseek_v2":
        common["num_key_value_heads"] = common["num_attention_heads"]  # MLA: no grouped KV heads
        cfg = tf.DeepseekV2Config(n_routed_experts=experts, moe_intermediate_size=16, n_shared_experts=1,
                                  first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
                                  qk_nope_head_dim=8, v_head_dim=8, n_group=1, topk_group=1, **common)
        model = tf.DeepseekV2ForCausalLM(cfg)
    else:
        raise ValueError(f"kind: one of mixtral, qwen2_moe, olmoe, deepseek_v2; got {kind!r}")
    return model.eval()


def _read_texts(args) -> list[str]:
    texts = list(args.prompt or [])
    for path in args.text or []:
        with open(path, encoding="utf-8") as f:
            texts += [ln.rstrip("\n") for ln in f if ln.strip()]
    if not texts:
        raise SystemExit("record_traces: give --prompt TEXT and/or --text FILE (one prompt per line)")
    return texts


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of ``scripts/record_traces.py``: record prompts, write a canonical ``.npz``."""
    p = argparse.ArgumentParser(prog="record_traces", description=_CLI_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model id or local path (e.g. allenai/OLMoE-1B-7B-0924)")
    src.add_argument("--tiny", choices=["mixtral", "qwen2_moe", "olmoe", "deepseek_v2"],
                     help="a tiny random MoE built from a config (no download; token ids = bytes of the text)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--text", action="append", help="a file with one prompt per line (repeatable)")
    p.add_argument("--out", required=True, help="output .npz (canonical slimjax trace)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="tokens to generate per prompt (0 = forward only)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, help="truncate prompts to this many tokens")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="torch dtype for --model (auto, bfloat16, float32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    texts = _read_texts(args)
    try:
        _, tf = _require()
    except ImportError as err:
        raise SystemExit(f"record_traces: {err}") from None
    if args.tiny:
        model = tiny_model(args.tiny, seed=args.seed).to(args.device)
        vocab = model.config.vocab_size
        inputs = [[b % vocab for b in t.encode("utf-8")][: args.max_prompt_tokens] for t in texts]
        source = f"tiny random {args.tiny} (seed {args.seed})"
    else:
        tok = tf.AutoTokenizer.from_pretrained(args.model)
        model = tf.AutoModelForCausalLM.from_pretrained(args.model, dtype=args.dtype).to(args.device).eval()
        inputs = [tok(t, truncation=True, max_length=args.max_prompt_tokens)["input_ids"] for t in texts]
        source = args.model
    trace = record(model, inputs, max_new_tokens=args.max_new_tokens, source=source)
    path = trace.save(args.out)
    print(f"wrote {path}: {trace}")
    return 0
