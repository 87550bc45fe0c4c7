"""Prompts as token ids: exactly a request's ``input_tokens`` ids, seeded, with shared prefixes where the trace
says requests share them (``prefix_blocks``), so a prefix cache sees real hits. Used by every real engine (the
in-process one and a server over HTTP), so both send the same prompts for the same trace and seed."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

from replay.trace.schema import Request

__all__ = ["Tokens", "prompt_token_ids"]


def _seed_words(*parts: Any) -> list[int]:
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=16).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


class Tokens:
    """Seeded token ids: a prefix block's content depends only on (seed, block id), a request's own tokens on
    (seed, request id). Block contents are kept in a small LRU (a trace reuses its hot prefixes)."""

    def __init__(self, vocab_size: int, seed: int, cache_blocks: int = 4096):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size, self.seed, self.cache_blocks = vocab_size, seed, cache_blocks
        self._blocks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def block(self, block_id: int, block_tokens: int) -> np.ndarray:
        key = (block_id, block_tokens)
        ids = self._blocks.get(key)
        if ids is None:
            rng = np.random.default_rng(_seed_words("block", self.seed, block_id, block_tokens))
            ids = rng.integers(0, self.vocab_size, block_tokens, dtype=np.int64)
            self._blocks[key] = ids
            if len(self._blocks) > self.cache_blocks:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(key)
        return ids

    def prompt(self, request: Request) -> list[int]:
        n = request.input_tokens
        parts: list[np.ndarray] = []
        covered = 0
        blocks, bt = request.prefix_blocks, request.block_tokens
        if blocks and bt:
            for block_id in blocks:
                if covered >= n:
                    break
                take = min(bt, n - covered)
                parts.append(self.block(int(block_id), int(bt))[:take])
                covered += take
        if covered < n:
            rng = np.random.default_rng(_seed_words("request", self.seed, request.id))
            parts.append(rng.integers(0, self.vocab_size, n - covered, dtype=np.int64))
        return np.concatenate(parts).tolist() if parts else []


def prompt_token_ids(request: Request, vocab_size: int, seed: int = 0) -> list[int]:
    """The prompt the engine sends for ``request``: exactly ``input_tokens`` ids in [0, vocab_size); requests
    whose ``prefix_blocks`` (of ``block_tokens`` tokens) agree share the same leading tokens."""
    return Tokens(vocab_size, seed, cache_blocks=0).prompt(request)
