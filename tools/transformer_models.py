"""Tiny transformer models for tools/fixture_transformers.py (torch only; never the package).

Each copies the structure of a well-known family the way its Hugging Face implementation
writes it (so the exported graph has the same ops and the same shape arithmetic), at toy
sizes: hidden 32, 4 heads of 8, 2 layers, FFN 64. Weights are random (``torch.manual_seed``
by the caller); norms get random affine parameters so that no two are equal.

``BertHF``      post-LN encoder, HF ``BertSelfAttention``: views built from ``x.size()``
                (Shape/Gather/Unsqueeze/Concat in the graph), extended mask
                ``(1 - mask) * finfo.min``, exact GELU, pooler (Linear + Tanh), classifier.
``ViTTiny``     pre-LN ViT: 4x4 patch Conv on 3x16x16, CLS token, learned positions, GELU MLP,
                final LayerNorm, head on the CLS token.
``GPT2Tiny``    pre-LN causal decoder: packed ``c_attn`` Linear(H, 3H) split into q, k, v,
                causal ``tril`` buffer + ``torch.where``, padding mask, tanh GELU, LM head.
``LlamaTiny``   RMSNorm, rotary embeddings (``rotate_half``), grouped-query attention (4 query
                heads, 2 KV heads, ``repeat_kv`` by expand + reshape), causal mask, SwiGLU FFN.
``SdpaEncoder`` pre-LN encoder whose attention is ``F.scaled_dot_product_attention`` with a
                boolean padding mask expanded to [N,1,T,T].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN, HEADS, FFN, LAYERS, VOCAB, MAX_POS = 32, 4, 64, 2, 100, 32
HEAD_DIM = HIDDEN // HEADS


def randomize_norm_params(model: nn.Module) -> None:
    """Random affine parameters of every LayerNorm / RMSNorm (else the exporter shares them)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, RMSNorm)):
                m.weight.copy_(torch.rand(m.weight.shape) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape) * 0.1)


# ---------------------------------------------------------------------------------------------
# BERT (Hugging Face layout)


class BertSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        new_shape = x.size()[:-1] + (HEADS, HEAD_DIM)      # Shape/Gather/Concat, as HF exports
        return x.view(new_shape).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
        probs = torch.softmax(scores + mask_add, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.size()[:-2] + (HIDDEN,))


class BertLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = BertSelfAttention()
        self.attn_out = nn.Linear(HIDDEN, HIDDEN)
        self.attn_ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.intermediate = nn.Linear(HIDDEN, FFN)
        self.output = nn.Linear(FFN, HIDDEN)
        self.out_ln = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        x = self.attn_ln(self.attn_out(self.attention(x, mask_add)) + x)
        return self.out_ln(self.output(F.gelu(self.intermediate(x))) + x)


class BertHF(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word = nn.Embedding(VOCAB, HIDDEN)
        self.position = nn.Embedding(MAX_POS, HIDDEN)
        self.token_type = nn.Embedding(2, HIDDEN)
        self.register_buffer("position_ids", torch.arange(MAX_POS).unsqueeze(0), persistent=False)
        self.emb_ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer() for _ in range(LAYERS))
        self.pooler = nn.Linear(HIDDEN, HIDDEN)
        self.classifier = nn.Linear(HIDDEN, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.size(1)
        types = torch.zeros_like(input_ids)
        x = self.word(input_ids) + self.token_type(types) + self.position(self.position_ids[:, :t])
        x = self.emb_ln(x)
        ext = attention_mask[:, None, None, :].to(x.dtype)
        mask_add = (1.0 - ext) * torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, mask_add)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


# ---------------------------------------------------------------------------------------------
# ViT


class ViTAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.out = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.size(0), x.size(1)
        q, k, v = (p(x).view(n, t, HEADS, HEAD_DIM).permute(0, 2, 1, 3)
                   for p in (self.query, self.key, self.value))
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HEAD_DIM), dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous().view(n, t, HIDDEN)
        return self.out(ctx)


class ViTLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12), nn.LayerNorm(HIDDEN, eps=1e-12)
        self.attention = ViTAttention()
        self.fc1, self.fc2 = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViTTiny(nn.Module):
    def __init__(self, image: int = 16, patch: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, HIDDEN, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, HIDDEN) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, HIDDEN) * 0.02)
        self.layers = nn.ModuleList(ViTLayer() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.head = nn.Linear(HIDDEN, classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln(x)[:, 0])


# ---------------------------------------------------------------------------------------------
# GPT-2


class GPT2Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.c_proj = nn.Linear(HIDDEN, HIDDEN)
        self.register_buffer("bias", torch.tril(torch.ones(MAX_POS, MAX_POS, dtype=torch.bool))
                             .view(1, 1, MAX_POS, MAX_POS), persistent=False)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size()[:-1] + (HEADS, HEAD_DIM)).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(HIDDEN, dim=2)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
        t = q.size(-2)
        causal = self.bias[:, :, :t, :t]
        w = torch.where(causal, w, torch.tensor(torch.finfo(w.dtype).min, dtype=w.dtype))
        probs = torch.softmax(w + mask_add, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return self.c_proj(ctx.view(ctx.size()[:-2] + (HIDDEN,)))


class GPT2Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
        self.attn = GPT2Attention()
        self.c_fc, self.mlp_proj = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask_add)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, HIDDEN), nn.Embedding(MAX_POS, HIDDEN)
        self.h = nn.ModuleList(GPT2Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.size(1), dtype=torch.long).unsqueeze(0)
        x = self.wte(input_ids) + self.wpe(pos)
        mask_add = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for block in self.h:
            x = block(x, mask_add)
        return self.lm_head(self.ln_f(x))


# ---------------------------------------------------------------------------------------------
# LLaMA


KV_HEADS = 2


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=False)
        self.k_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)

    def forward(self, x, cos, sin, mask_add):
        n, t = x.size(0), x.size(1)
        q = self.q_proj(x).view(n, t, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(n, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(n, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        rep = HEADS // KV_HEADS                                 # repeat_kv
        k = k[:, :, None].expand(n, KV_HEADS, rep, t, HEAD_DIM).reshape(n, HEADS, t, HEAD_DIM)
        v = v[:, :, None].expand(n, KV_HEADS, rep, t, HEAD_DIM).reshape(n, HEADS, t, HEAD_DIM)
        w = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(HEAD_DIM) + mask_add
        ctx = torch.matmul(torch.softmax(w, dim=-1), v).transpose(1, 2).reshape(n, t, HIDDEN)
        return self.o_proj(ctx)


class LlamaLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_norm, self.post_norm = RMSNorm(HIDDEN), RMSNorm(HIDDEN)
        self.self_attn = LlamaAttention()
        self.gate_proj = nn.Linear(HIDDEN, FFN, bias=False)
        self.up_proj = nn.Linear(HIDDEN, FFN, bias=False)
        self.down_proj = nn.Linear(FFN, HIDDEN, bias=False)

    def forward(self, x, cos, sin, mask_add):
        x = x + self.self_attn(self.input_norm(x), cos, sin, mask_add)
        h = self.post_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class LlamaTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(LlamaLayer() for _ in range(LAYERS))
        self.norm = RMSNorm(HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.size(1)
        pos = torch.arange(t, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        mask_add = torch.zeros(t, t).masked_fill(~causal, torch.finfo(torch.float32).min)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask_add)
        return self.lm_head(self.norm(x))


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention


class SdpaLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
        self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, t = x.size(0), x.size(1)
        h = self.ln1(x)
        q, k, v = (p(h).view(n, t, HEADS, HEAD_DIM).transpose(1, 2) for p in (self.q, self.k, self.v))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = x + self.o(ctx.transpose(1, 2).reshape(n, t, HIDDEN))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class SdpaEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(VOCAB, HIDDEN), nn.Embedding(MAX_POS, HIDDEN)
        self.layers = nn.ModuleList(SdpaLayer() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(HIDDEN)
        self.classifier = nn.Linear(HIDDEN, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.size(1), dtype=torch.long).unsqueeze(0)
        x = self.embed(input_ids) + self.pos(pos)
        n, t = input_ids.shape
        # [N,1,T,T], not the broadcastable [N,1,1,T]: onnxruntime's CPU Attention (opset 23)
        # rejects a mask whose query axis is 1 ("inconsistent q_sequence_length")
        keep = attention_mask[:, None, None, :].to(torch.bool).expand(n, 1, t, t)
        for layer in self.layers:
            x = layer(x, keep)
        return self.classifier(self.ln(x)[:, 0])
