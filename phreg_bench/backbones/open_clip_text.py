"""The text tower of an open_clip model as a :class:`~phreg_bench.backbones.base.TextTower`.

Prompts are tokenised and encoded in batches. CLIP's text transformer is causal (``attn_mask`` is upper
triangular) and pools the end-of-text token (``argmax`` of the token ids, or the first ``eos_id``), so a
token's output depends only on the tokens before it: the context can stop at the longest prompt of the
batch — positional embeddings and mask sliced to that length — and the pooled embedding is unchanged,
while attention costs drop from 77² to L² (typically L ≈ 10–20 for templated class names). Towers where
that does not hold (bidirectional, ``last``/``first`` pooling, CoCa's appended CLS, padding masks,
Hugging Face text encoders) run on the full context through open_clip's own modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from phreg_core.errors import ConfigError

DEFAULT_BATCH_SIZE = 256  # prompts per forward pass


class OpenClipTextTower(nn.Module):
    """``encode(texts) -> [N, D]`` in the image tower's projected space, not normalised."""

    def __init__(self, model: nn.Module, tokenizer: Callable[[Sequence[str]], Tensor], identity: str,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        from open_clip.transformer import TextTransformer

        self.identity = identity
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.module: nn.Module | None = None  # a whole text module, used when we cannot slice the context
        text = getattr(model, "text", None)
        if text is None:  # open_clip CLIP keeps the text tower's parts on the model itself
            parts, pool, eos, cls_emb, pad_mask = model, model.text_pool_type, model.text_eos_id, None, False
        elif isinstance(text, TextTransformer):
            parts, pool, eos, cls_emb, pad_mask = text, text.pool_type, text.eos_id, text.cls_emb, text.use_pad_mask
        else:  # e.g. a Hugging Face text encoder
            self.module, self.pool_type, self.can_truncate = text, "module", False
            return
        self.token_embedding = parts.token_embedding
        self.positional_embedding = parts.positional_embedding
        self.transformer = parts.transformer
        self.ln_final = parts.ln_final
        self.text_projection = parts.text_projection
        self.register_buffer("attn_mask", parts.attn_mask, persistent=False)
        self.pool_type, self.eos_id = pool, eos
        if cls_emb is not None or pad_mask:
            self.module = text
        self.can_truncate = self.module is None and self.attn_mask is not None and pool in ("argmax", "eos")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def truncate(self, tokens: Tensor) -> Tensor:
        """Cut ``[N, 77]`` token ids after the last end-of-text position of the batch (when exact)."""
        if not self.can_truncate:
            return tokens
        ends = tokens.argmax(-1) if self.pool_type == "argmax" else (tokens == self.eos_id).int().argmax(-1)
        return tokens[:, : int(ends.max()) + 1]

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Pooled, projected features of token ids ``[N, L]`` (any ``L`` up to the context length)."""
        if self.module is not None:
            return self.module(tokens)
        from open_clip.transformer import text_global_pool

        length = tokens.shape[1]
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        x = self.ln_final(self.transformer(x, attn_mask=mask))
        pooled = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection if self.text_projection is not None else pooled

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed prompts ``[N, D]`` (float32, unnormalised) in batches of ``batch_size``."""
        texts = list(texts)
        if not texts:
            raise ConfigError("encode() needs at least one prompt")
        device, chunks = self.device, []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start : start + self.batch_size]).to(device)
            chunks.append(self.encode_tokens(self.truncate(tokens)).float())
        return torch.cat(chunks)
