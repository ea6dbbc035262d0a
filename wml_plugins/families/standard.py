"""Families of any Hugging Face architecture whose config has the standard fields.

A :class:`Spec` names the config fields that hold the layers, heads, key/value heads, width, head
size and FFN width (``num_hidden_layers``, ``num_attention_heads``, …; configs that spell them
otherwise alias them through ``attribute_map``), and, for the ``l1`` initializer, the ROLE of each
module (q/k/v/o projection, fused q/k/v, MLP in/out, norm, embedding, head). From that alone:

- counts are exact for any config: the model built on the ``meta`` device (``counting.meta_count``);
- ``count_shapes``, the vectorised count the ``bayes`` search needs, is a polynomial fitted per
  base config from meta builds and verified exactly on further ones (``counting.fit_counter``),
  else counted shape by shape;
- ``make_config`` copies the teacher's config and changes only the shape, so the family's own
  choices (activation, norms, rotary settings, tied embeddings, biases) stay; fields that equal
  the width in the base (OPT's ``word_embed_proj_dim``, DeBERTa's ``pooler_hidden_size``) follow it,
  per-layer lists (``layer_types``) follow the depth, and head sizes keep rotary dimensions even
  (``head_dim_multiple_for``: 8 for GPT-NeoX's default partial rotary factor of 1/4);
- ``prunable_axes`` reads the parameter names of a meta-built model and maps each through the
  role table; a parameter no role covers stops ``l1`` with one line (``bayes`` works for it).

:data:`SPECS` lists the named families. :class:`GenericFamily` (registered as ``standard``) adopts a
config of any other model type that has the standard fields and a causal-LM or masked-LM class.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from wml_framework.api import Axis, model_class

from .common import FamilyBase, as_int_array, config_with
from .counting import (
    Point,
    PolyCount,
    config_key,
    fit_counter,
    meta_count,
    meta_model,
    quiet,
)
from .llama import kv_heads_for

__all__ = ["Spec", "SPECS", "REGISTERED", "LLAMA_ROLES", "StandardFamily", "GenericFamily", "derive_spec",
           "partial_rotary_factor", "rotary_multiple", "FFN_FIELDS", "FOLLOW_HIDDEN"]

#: where a config may keep its FFN width, in the order tried (``None`` in ``n_inner`` means 4 × width)
FFN_FIELDS = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size", "inner_hidden_size")
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
#: fields that, where the base sets them equal to the width, follow the width in every copy
FOLLOW_HIDDEN = ("word_embed_proj_dim", "embedding_size", "pooler_hidden_size", "projection_dim")
#: model types whose learned positions start after the padding id (usable length = table − pad − 1)
PAD_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                              "data2vec-text", "longformer", "mpnet", "ibert", "xmod"})
NO_POSITION_LIMIT = 1 << 20
_FITS: dict = {}

# -- role tables: module path -> role ("layer": relative to a layer; "model": full path) ----------------------
LLAMA_ROLES = {
    "layer": {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
              "mlp.gate_proj": "mlp_in", "mlp.up_proj": "mlp_in", "mlp.down_proj": "mlp_out",
              "input_layernorm": "norm", "post_attention_layernorm": "norm"},
    "model": {"model.embed_tokens": "embed", "model.norm": "norm", "lm_head": "head"},
}
GPT_NEOX_ROLES = {
    "layer": {"attention.query_key_value": "qkv_per_head", "attention.dense": "o",
              "mlp.dense_h_to_4h": "mlp_in", "mlp.dense_4h_to_h": "mlp_out",
              "input_layernorm": "norm", "post_attention_layernorm": "norm"},
    "model": {"gpt_neox.embed_in": "embed", "gpt_neox.final_layer_norm": "norm", "embed_out": "head", "lm_head": "head"},
}
OPT_ROLES = {
    "layer": {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.out_proj": "o",
              "self_attn_layer_norm": "norm", "fc1": "mlp_in", "fc2": "mlp_out", "final_layer_norm": "norm"},
    "model": {"model.decoder.embed_tokens": "embed", "model.decoder.embed_positions": "embed",
              "model.decoder.final_layer_norm": "norm", "lm_head": "head"},
}
PHI_ROLES = {
    "layer": {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.dense": "o",
              "mlp.fc1": "mlp_in", "mlp.fc2": "mlp_out", "input_layernorm": "norm"},
    "model": {"model.embed_tokens": "embed", "model.final_layernorm": "norm", "lm_head": "head"},
}


@dataclass(frozen=True)
class Spec:
    """Which config fields hold the shape of a model type, and (for ``l1``) its module roles."""

    model_type: str
    name: str = ""
    help: str = ""
    layers: str = "num_hidden_layers"
    heads: str = "num_attention_heads"
    hidden: str = "hidden_size"
    ffn: str = "intermediate_size"
    kv_heads: Optional[str] = None        # grouped-query attention: the key/value head count
    head_dim: Optional[str] = None        # an explicit head size (else width / heads)
    positions: Optional[str] = "max_position_embeddings"
    layer_prefix: str = ""
    gated: bool = False                   # a gated MLP (default FFN ≈ 8h/3) rather than 4h
    rotary: bool = False
    roles: Optional[dict] = field(default=None, hash=False, compare=False)

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", self.model_type)


def _llama_like(model_type: str, help: str, **kw) -> Spec:
    return Spec(model_type, help=help, kv_heads="num_key_value_heads", layer_prefix="model.layers.", gated=True,
                rotary=True, roles=LLAMA_ROLES, **kw)


SPECS: dict[str, Spec] = {s.model_type: s for s in (
    _llama_like("mistral", "Mistral (MistralForCausalLM): LLaMA-like, sliding-window attention", head_dim="head_dim"),
    _llama_like("qwen2", "Qwen2 (Qwen2ForCausalLM): LLaMA-like with q/k/v biases"),
    Spec("gpt_neox", help="GPT-NeoX / Pythia (GPTNeoXForCausalLM): fused per-head q/k/v, partial rotary, parallel residual",
         layer_prefix="gpt_neox.layers.", rotary=True, roles=GPT_NEOX_ROLES),
    Spec("opt", help="OPT (OPTForCausalLM): learned positions (offset 2), ReLU MLP, biases", ffn="ffn_dim",
         layer_prefix="model.decoder.layers.", roles=OPT_ROLES),
    Spec("phi", help="Phi-1/1.5/2 (PhiForCausalLM): partial rotary, parallel attention and MLP, biased head",
         kv_heads="num_key_value_heads", layer_prefix="model.layers.", rotary=True, roles=PHI_ROLES),
    Spec("gemma", help="Gemma (GemmaForCausalLM): gated GeLU MLP, explicit head size, scaled embeddings (bayes only)",
         kv_heads="num_key_value_heads", head_dim="head_dim", layer_prefix="model.layers.", gated=True, rotary=True),
    Spec("roberta", help="RoBERTa (RobertaForMaskedLM), an encoder; positions offset by the padding id (bayes only)",
         layer_prefix="roberta.encoder.layer."),
    Spec("bert", help="BERT (BertForMaskedLM), an encoder (bayes only)", layer_prefix="bert.encoder.layer."),
    Spec("deberta-v2", help="DeBERTa-v2/v3 (DebertaV2ForMaskedLM), an encoder (bayes only)",
         layer_prefix="deberta.encoder.layer."),
)}
#: the named families registered under their model type; ``mistral`` is served by ``standard``, whose
#: table it is in, so that a third-party ``mistral`` plugin (docs/examples) keeps its name
REGISTERED = ("qwen2", "gpt_neox", "opt", "phi", "gemma", "roberta", "bert", "deberta-v2")


# -- rotary head sizes ------------------------------------------------------------------------------------------
def partial_rotary_factor(config) -> Optional[float]:
    """The fraction of each head that rotary embeddings rotate (1.0 for full rotary), or None
    where the config has no rotary embeddings."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params.get("partial_rotary_factor") is not None:
        return float(params["partial_rotary_factor"])
    for key in ("partial_rotary_factor", "rotary_pct"):
        value = getattr(config, key, None)
        if value is not None:
            return float(value)
    if params is not None or getattr(config, "rope_theta", None) is not None:
        return 1.0
    return None


def rotary_multiple(factor: Optional[float]) -> int:
    """The smallest head size m whose multiples all rotate an even number of dimensions
    (``m · factor`` an even integer): 2 for full rotary, 4 for 1/2, 8 for 1/4; 1 without rotary."""
    if factor is None or factor <= 0:
        return 1
    for m in range(1, 4097):
        rot = m * factor
        if abs(rot - round(rot)) < 1e-9 and round(rot) > 0 and round(rot) % 2 == 0:
            return m
    return 2


class StandardFamily(FamilyBase):
    """A model family described by a :class:`Spec`; see the module docstring."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.name, self.model_type, self.layer_prefix = spec.name, spec.model_type, spec.layer_prefix
        self.head_dim_multiple = 2 if spec.rotary else 1
        self.hidden_follows_heads = spec.head_dim is None

    # -- fields ----------------------------------------------------------------------------------
    def _config_class(self):
        from transformers import CONFIG_MAPPING

        return CONFIG_MAPPING[self.model_type]

    def _explicit_head_dim(self, config) -> bool:
        """Whether a config of this family sets its head size apart from the width."""
        return self.spec.head_dim is not None and (config is None or getattr(config, self.spec.head_dim, None) is not None)

    def head_dim_multiple_for(self, config) -> int:
        """Head sizes must be multiples of this for ``config``'s rotary embeddings (see :func:`rotary_multiple`)."""
        return rotary_multiple(partial_rotary_factor(config)) if config is not None else self.head_dim_multiple

    def _kv_heads_of(self, config) -> int:
        value = getattr(config, self.spec.kv_heads, None) if self.spec.kv_heads else None
        return int(value or getattr(config, self.spec.heads))

    def gqa_ratio(self, config) -> int:
        n_head, n_kv = int(getattr(config, self.spec.heads)), self._kv_heads_of(config)
        return n_head // n_kv if n_head % n_kv == 0 else 1

    def position_offset(self, config) -> int:
        """Rows of the position table before the first usable position (RoBERTa: pad id + 1)."""
        if self.model_type in PAD_OFFSET_TYPES:
            pad = getattr(config, "pad_token_id", None)
            return int(pad) + 1 if pad is not None else 0
        return 0

    def max_positions(self, config) -> int:
        value = getattr(config, self.spec.positions, None) if self.spec.positions else None
        if value is None:
            return NO_POSITION_LIMIT
        return int(value) - self.position_offset(config)

    def shape(self, config) -> dict:
        s = self.spec
        hidden, n_head = int(getattr(config, s.hidden)), int(getattr(config, s.heads))
        explicit = getattr(config, s.head_dim, None) if s.head_dim else None
        ffn = getattr(config, s.ffn, None)
        return dict(n_layer=int(getattr(config, s.layers)), n_head=n_head,
                    head_dim=int(explicit) if explicit else hidden // n_head, hidden=hidden,
                    ffn=int(ffn) if ffn else 4 * hidden)

    def default_ffn(self, hidden: int) -> int:
        """≈ 8h/3 rounded to a multiple of 16 for a gated MLP (as LLaMA), else 4h."""
        if self.spec.gated:
            return max(16, 16 * round(8 * int(hidden) / 3 / 16))
        return 4 * int(hidden)

    # -- configs -----------------------------------------------------------------------------------
    def make_config(self, *, vocab_size, n_layer, n_head, head_dim, ffn, max_positions,
                    bos_token_id=None, eos_token_id=None, pad_token_id=None, base=None, hidden=None,
                    n_kv_head=None):
        """A config of the given shape; everything else is the base's (or the config class's
        defaults without one). ``max_positions`` is the usable context (an offset such as
        RoBERTa's is added back)."""
        s = self.spec
        n_layer, n_head, head_dim, ffn = int(n_layer), int(n_head), int(head_dim), int(ffn)
        h = int(hidden) if hidden is not None else n_head * head_dim
        explicit = self._explicit_head_dim(base)
        if not explicit and h != n_head * head_dim:
            raise ValueError(f"{self.name}: hidden ({h}) must equal n_head × head_dim ({n_head * head_dim}): "
                             "the model derives its head size from them")
        dims = {"vocab_size": int(vocab_size), s.layers: n_layer, s.heads: n_head, s.hidden: h, s.ffn: ffn}
        if s.kv_heads:
            if n_kv_head is None:
                n_kv_head = kv_heads_for(n_head, self.gqa_ratio(base)) if base is not None else n_head
            if n_head % int(n_kv_head):
                raise ValueError(f"{self.name}: n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
            dims[s.kv_heads] = int(n_kv_head)
        elif n_kv_head is not None and int(n_kv_head) != n_head:
            raise ValueError(f"{self.name} has no grouped-query attention (n_kv_head must equal n_head)")
        if explicit:
            dims[s.head_dim] = head_dim
        tokens = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        with quiet():
            if base is None:
                cfg = self._config_class()(**dims, **{k: v for k, v in tokens.items() if v is not None})
                for key in FOLLOW_HIDDEN:
                    if getattr(cfg, key, None) is not None:
                        setattr(cfg, key, h)
            else:
                cfg = config_with(base, type(base), {**dims, **tokens})
                base_hidden, base_layers = int(getattr(base, s.hidden)), int(getattr(base, s.layers))
                for key in FOLLOW_HIDDEN:
                    if getattr(base, key, None) == base_hidden:
                        setattr(cfg, key, h)
                for key, value in base.to_dict().items():      # per-layer lists (layer_types …) follow the depth
                    if "layer" in key and isinstance(value, list) and value and len(value) == base_layers:
                        setattr(cfg, key, [value[i % len(value)] for i in range(n_layer)])
            if s.positions and max_positions is not None and getattr(cfg, s.positions, None) is not None:
                setattr(cfg, s.positions, int(max_positions) + self.position_offset(cfg))
        return cfg

    # -- counting ------------------------------------------------------------------------------------
    def count_parameters(self, config) -> int:
        """Exact, from the model built on the meta device."""
        return meta_count(config)

    def _kv_for(self, base, H: np.ndarray, n_kv_head) -> np.ndarray:
        if not self.spec.kv_heads:
            if n_kv_head is not None and np.any(as_int_array(n_kv_head) != H):
                raise ValueError(f"{self.name} has no grouped-query attention (n_kv_head must equal n_head)")
            return H
        if n_kv_head is not None:
            return np.broadcast_to(as_int_array(n_kv_head), H.shape) if H.ndim else as_int_array(n_kv_head)
        ratio = self.gqa_ratio(base)
        lookup = {int(n): kv_heads_for(int(n), ratio) for n in np.unique(H)}
        return np.vectorize(lambda n: lookup[int(n)], otypes=[np.int64])(H) if H.ndim else as_int_array(lookup[int(H)])

    def count_shapes(self, base, *, n_layer, n_head, head_dim, ffn, hidden=None, n_kv_head=None) -> np.ndarray:
        """Vectorised exact count of ``make_config(base=base, …)`` for arrays of shapes: the fitted
        polynomial of :meth:`counter`, else one meta build per distinct shape (memoised)."""
        L, H, d, F = (as_int_array(x) for x in (n_layer, n_head, head_dim, ffn))
        h = H * d if hidden is None else as_int_array(hidden)
        if not self._explicit_head_dim(base) and np.any(h != H * d):
            raise ValueError(f"{self.name} needs hidden == n_head * head_dim")
        K = self._kv_for(base, H, n_kv_head)
        poly = self.counter(base)
        if poly is not None:
            return poly(L, h, H, K, d, F)
        one = lambda *p: self._count_point(base, Point(*(int(x) for x in p)))  # noqa: E731
        return np.vectorize(one, otypes=[np.int64])(L, h, H, K, d, F)

    def _count_point(self, base, p: Point) -> int:
        return meta_count(self.make_config(
            vocab_size=base.vocab_size, n_layer=p.L, n_head=p.H, head_dim=p.d, ffn=p.F,
            max_positions=self.max_positions(base), base=base, hidden=p.h,
            n_kv_head=p.K if self.spec.kv_heads else None))

    def counter(self, base) -> Optional[PolyCount]:
        """The count of shapes copied from ``base`` as an exact polynomial (fitted once per base
        config and verified; see ``counting.fit_counter``), or None where no exact fit exists."""
        key = (self.spec, config_key(base))
        if key not in _FITS:
            m = self.head_dim_multiple_for(base)
            gqa, free = bool(self.spec.kv_heads), self._explicit_head_dim(base)

            def draw(rng: random.Random) -> Point:
                L = rng.randint(1, 3)
                K = rng.randint(1, 3) if gqa else None
                H = K * rng.randint(1, 3) if gqa else rng.randint(1, 6)
                d = m * rng.randint(1, 5)
                h = H * rng.randint(1, 12) if free else H * d
                return Point(L, h, H, K if gqa else H, d, rng.randint(1, 96))

            s = self.shape(base)
            own = Point(s["n_layer"], s["hidden"], s["n_head"], self._kv_heads_of(base), s["head_dim"], s["ffn"])
            small = Point(1, m if not free else 1, 1, 1, m, 1)
            _FITS[key] = fit_counter(draw, lambda p: self._count_point(base, p), must_check=(own, small))
        return _FITS[key]

    # -- pruning -------------------------------------------------------------------------------------
    def head_group(self, config) -> int:
        """Query heads per prunable head unit: a key/value head is pruned with its query heads."""
        return self.gqa_ratio(config)

    def _refuse(self, why: str):
        raise ValueError(f"the l1 initializer cannot prune {self.name} models ({why}); "
                         f"the bayes initializer works for them (--init bayes)")

    def prunable_axes(self, config) -> dict:
        """Parameter name -> one entry per tensor axis, from the names of a meta-built model of
        ``config`` mapped through the family's role table; refuses (one line) where a parameter
        has no role or a tensor's size does not fit its role."""
        roles = self.spec.roles
        if not roles:
            self._refuse("it has no table of module roles")
        s = self.shape(config)
        K = self._kv_heads_of(config)
        if s["n_head"] % K:
            self._refuse("num_attention_heads is not a multiple of num_key_value_heads")
        ratio, d = self.gqa_ratio(config), s["head_dim"]
        hid = Axis("hidden")
        axes = {}
        for name, p in meta_model(config).named_parameters():
            module, _, kind = name.rpartition(".")
            layer = self.layer_of(name)
            if layer is not None:
                role = roles["layer"].get(module[len(f"{self.layer_prefix}{layer}."):])
            else:
                role = roles["model"].get(module)
            entry = _role_axes(role, kind, layer, hid, ratio, d)
            if entry is None or len(entry) != p.ndim:
                self._refuse(f"parameter {name!r} has no known role")
            sizes = {"hidden": s["hidden"], "head": K, "neuron": s["ffn"]}
            for axis, size in zip(entry, p.shape):
                if axis is not None and axis.repeat * sizes[axis.unit] * axis.width != size:
                    self._refuse(f"parameter {name!r} of shape {tuple(p.shape)} does not fit its role {role!r}")
            axes[name] = entry
        return axes


def _role_axes(role: Optional[str], kind: str, layer: Optional[int], hid: Axis, ratio: int, d: int):
    """The axes of a parameter (``weight`` (out, in) or ``bias`` (out,)) of a module with ``role``."""
    if role is None or kind not in ("weight", "bias"):
        return None
    q_heads = Axis("head", layer, width=ratio * d)        # a group's query heads are contiguous
    kv_heads, neuron = Axis("head", layer, width=d), Axis("neuron", layer)
    out_in = {"q": (q_heads, hid), "k": (kv_heads, hid), "v": (kv_heads, hid), "o": (hid, q_heads),
              "qkv_per_head": (Axis("head", layer, width=3 * d), hid) if ratio == 1 else None,
              "mlp_in": (neuron, hid), "mlp_out": (hid, neuron), "head": (None, hid), "embed": (None, hid)}
    if role == "norm":
        return (hid,)
    pair = out_in.get(role)
    if pair is None or (role == "embed" and kind == "bias"):
        return None
    return pair if kind == "weight" else pair[:1]


# -- any other model type -----------------------------------------------------------------------------------------
REQUIRES = ("num_hidden_layers, num_attention_heads, hidden_size and an FFN width "
            f"({', '.join(FFN_FIELDS[:3])} …), and a causal-LM or masked-LM class in transformers")


def _int_field(config, name: str) -> Optional[int]:
    value = getattr(config, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def derive_spec(config) -> Spec:
    """A :class:`Spec` for a config of an unnamed model type, read from its fields (sizing only: no
    role table, so ``l1`` refuses it). Raises ``ValueError`` naming what it lacks."""
    model_type = getattr(config, "model_type", None)
    lacks = [f for f in ("num_hidden_layers", "num_attention_heads", "hidden_size") if _int_field(config, f) is None]
    names = set(config.to_dict()) | set(getattr(type(config), "attribute_map", {}) or {})
    ffn = next((f for f in FFN_FIELDS if f in names or hasattr(config, f)), None)
    if ffn is None:
        lacks.append("an FFN width")
    if lacks:
        raise ValueError(f"family 'standard' takes any config with {REQUIRES}; model_type {model_type!r} lacks "
                         + ", ".join(lacks))
    try:
        model_class(config)
    except ValueError:
        raise ValueError(f"family 'standard' takes any config with {REQUIRES}; model_type {model_type!r} has no "
                         "causal-LM or masked-LM class") from None
    try:
        model = meta_model(config)
    except Exception as exc:  # noqa: BLE001 - a config transformers cannot build
        raise ValueError(f"family 'standard' cannot build model_type {model_type!r} from its config: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    n_layer = int(config.num_hidden_layers)
    return Spec(model_type, help=f"{model_type} (adopted by 'standard')", ffn=ffn,
                kv_heads="num_key_value_heads" if _int_field(config, "num_key_value_heads") else None,
                head_dim="head_dim" if _int_field(config, "head_dim") else None,
                positions=next((f for f in POSITION_FIELDS if _int_field(config, f) is not None), None),
                layer_prefix=_layer_prefix(model, n_layer),
                gated=any("gate" in n for n, _ in model.named_parameters()),
                rotary=partial_rotary_factor(config) is not None)


def _layer_prefix(model, n_layer: int) -> str:
    """``<path>.`` of the module list that holds the layers (the first of length ``n_layer``)."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layer and name:
            return name + "."
    return ""


class GenericFamily:
    """``standard``: adopts a config of a model type no other family names (see :func:`derive_spec`).

    The registry matches families by ``model_type``; this one has none of its own and is asked last,
    through ``adopt(config)``, by ``family_for``. ``mistral`` comes through here (from :data:`SPECS`)."""

    name = "standard"
    model_type = ""
    head_dim_multiple = 1

    def adopt(self, config) -> StandardFamily:
        """The family of ``config``: the named spec of its model type, else one read from its fields;
        ``ValueError`` (one line, saying what would work) where it has not the standard fields."""
        model_type = getattr(config, "model_type", None)
        spec = SPECS.get(model_type) or derive_spec(config)
        return StandardFamily(replace(spec))

    def _needs_a_config(self, *args, **kwargs):
        raise ValueError("family 'standard' adopts a given teacher's model type; to train a teacher from scratch "
                         "name a family (teacher_family = llama, gpt2, qwen2, roberta …)")

    make_config = count_parameters = shape = shape_string = max_positions = count_shapes = _needs_a_config

    def default_ffn(self, hidden: int) -> int:
        return 4 * int(hidden)
