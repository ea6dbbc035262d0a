"""Tiny Hugging Face models and a learnable toy language for tests (no files, no downloads).

Shared by several test modules: keep the functions general. ``toy_corpus`` generates token
sequences of a small stochastic grammar (phrases of fixed templates, with repeats) that a
2-layer model learns within a few hundred steps, so a trained teacher is far better than chance.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from wml_framework.api import Batch


def tiny_gpt2_config(*, vocab_size=128, n_layer=2, n_head=4, n_embd=32, n_inner=None,
                     n_positions=64, **extra) -> GPT2Config:
    """A GPT-2 config small enough for CPU tests; dropout off so outputs are deterministic."""
    extra = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
             "bos_token_id": 0, "eos_token_id": 1, **extra}
    return GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                      n_inner=n_inner, n_positions=n_positions, **extra)


def tiny_llama_config(*, vocab_size=128, n_layer=2, n_head=4, n_kv_head=None, hidden=32, ffn=64,
                      head_dim=None, max_positions=64, **extra) -> LlamaConfig:
    """A LLaMA config small enough for CPU tests."""
    extra = {"bos_token_id": 0, "eos_token_id": 1, **extra}
    return LlamaConfig(vocab_size=vocab_size, num_hidden_layers=n_layer, num_attention_heads=n_head,
                       num_key_value_heads=n_kv_head or n_head, hidden_size=hidden, intermediate_size=ffn,
                       head_dim=head_dim or hidden // n_head, max_position_embeddings=max_positions, **extra)


def build(config, seed: int = 0):
    """A freshly initialised model for ``config`` (seeded), in eval mode."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def toy_corpus(vocab_size: int, n_seq: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``(n_seq, seq_len)`` token ids of a small grammar: each sequence is a chain of phrases;
    a phrase is one of a few fixed templates, the next template depends on the last one.
    Entropy per token is low, so a small model learns it quickly; the vocabulary beyond the
    templates' words is rarely used (as in real text, most of the table is tail)."""
    g = torch.Generator().manual_seed(seed)
    n_templates, words = 12, max(8, min(vocab_size - 2, 48))
    templates = [torch.randint(2, 2 + words, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g)
                 for _ in range(n_templates)]
    successors = torch.randint(0, n_templates, (n_templates, 2), generator=g)
    out = torch.empty(n_seq, seq_len, dtype=torch.long)
    for s in range(n_seq):
        toks, t = [0], int(torch.randint(0, n_templates, (1,), generator=g))
        while len(toks) < seq_len:
            toks.extend(templates[t].tolist())
            t = int(successors[t, int(torch.randint(0, 2, (1,), generator=g))])
        out[s] = torch.tensor(toks[:seq_len])
    return out


def lm_batch(tokens: torch.Tensor) -> Batch:
    """Inputs and next-token labels aligned with the logits (last position unscored)."""
    labels = torch.full_like(tokens, -100)
    labels[:, :-1] = tokens[:, 1:]
    return Batch(tokens, labels)


def lm_loss(model, tokens: torch.Tensor) -> float:
    """Mean next-token cross-entropy of ``model`` on ``tokens`` (no gradient)."""
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[:, :-1]
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       tokens[:, 1:].reshape(-1)))


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads (1 is several times faster than 2 for tiny models
    on a busy 2-core machine), restoring the previous setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_tiny(model, tokens: torch.Tensor, steps: int = 300, lr: float = 3e-3, batch: int = 16,
               seed: int = 0):
    """Train ``model`` by plain AdamW on random rows of ``tokens``; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    with torch_threads(1):
        for _ in range(steps):
            rows = tokens[torch.randint(0, tokens.shape[0], (batch,), generator=g)]
            logits = model(input_ids=rows).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def word_tokenizer(vocab_size: int):
    """A Hugging Face fast tokenizer whose token i is the word ``w<i>`` (0 = bos, 1 = eos), so
    ``corpus_text`` of toy tokens round-trips; saved and loaded like any real tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


def corpus_text(tokens: torch.Tensor) -> str:
    """Toy token rows as text in :func:`word_tokenizer`'s words, one row per line."""
    return "\n".join(" ".join(f"w{t}" for t in row.tolist() if t >= 2) for row in tokens) + "\n"
