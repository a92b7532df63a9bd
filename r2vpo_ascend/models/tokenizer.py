"""Tokenizers built in-process (no hub downloads): a character-level one for the embedded tasks."""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"

# Digits, operators and the few letters/punctuation the built-in task prompts use. Any
# character outside the alphabet maps to <unk>; pass your own alphabet for other tasks.
DEFAULT_ALPHABET = string.digits + "+-*/=()., ?:\n" + string.ascii_letters


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one token per character, with pad/bos/eos/unk.

    It pads on the left (generation batches), has no chat template (prompts use the
    plain template) and round-trips any text made of `alphabet` exactly.
    """
    chars = sorted(set(alphabet))
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Split into single characters, keeping spaces/newlines as tokens of their own.
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    return tok
