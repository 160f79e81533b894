"""A Hugging Face tokenizer for culture quizzes (word level, one word per token).

Vocabulary (the earlier toolkit's, REFERENCE.md section 8, plus ``[PAD]``)::

    "0" "1" … "9" "a"      -> 0 … 10   cell colours (hex digits)
    "X" "f_X" "Y" "f_Y"    -> 11 … 14  block markers A, f(A), B, f(B)
    "[UNK]"                -> 15       any other word
    "[PAD]"                -> 16       padding (and EOS)

Words are split on whitespace (``Whitespace`` pre-tokenizer), so the text
``"0 X 0 a 3 …"`` encodes to ``[0, 11, 0, 10, 3, …]`` and decodes back to the
same text. ``model_max_length`` is 405: the BOS token plus a 404-token quiz.

Special tokens — the choice, and why
------------------------------------
* **BOS = "0" (id 0).** The GPTs start every sequence with token 0 (MyGPT
  shifts its input right by one with a 0; the TransformerLens bridge prepends
  0, REFERENCE.md section 4), so 0 *is* the model's BOS. ``add_bos_token`` is
  on: ``tokenizer(quiz_text)`` gives the 405 model-input ids (BOS + 404), the
  same rows as ``culture-interp dataset build``. Use
  ``add_special_tokens=False`` for the bare 404. (TransformerLens also needs
  ``add_bos_token`` set: otherwise ``HookedTransformer.set_tokenizer`` tries
  to reload the tokenizer from the hub with it.)
* **PAD = EOS = "[PAD]" (id 16).** The earlier toolkit used pad = "0", which
  is also the empty cell; TransformerLens builds attention masks from
  ``tokenizer.pad_token_id`` (left padding, an explicit mask, or any call with
  a KV cache, ``generate`` included) and then masks every *empty cell* it
  takes for padding — wrong logits, silently. Id 16 is outside the models'
  15-token vocabulary, so it never occurs in a quiz: no cell is ever masked,
  and the masks TransformerLens builds are all ones. For the same reason the
  models can never emit it, so ``HookedTransformer.generate`` (which stops at
  EOS by default) always runs its ``max_new_tokens``, which is what a
  fixed-length quiz needs. A batch that really gets padded (strings of unequal
  length) holds id 16, which the model cannot embed: it fails loudly (quizzes
  and their prompts always have equal lengths, so this does not arise).
* ``[UNK]`` (15) keeps the earlier id; like 16 it is not a model token.

Caveats of BOS = "0" (it is a *special* token for ``transformers``):
``decode(..., skip_special_tokens=True)`` drops every empty cell — and
TransformerLens ``generate(..., return_type="str")`` decodes that way, so ask
it for tokens. SAELens' ``exclude_special_tokens=True`` would likewise drop
the activations of every empty cell (its default, ``False``, keeps them).

Nothing here reaches the network except :func:`push_tokenizer`.
``transformers`` is imported only inside the functions that need it.
"""

from __future__ import annotations

import os
from pathlib import Path

from culture.errors import CultureError
from culture.hub import check_push, check_repo_id, hub_offline, push_error  # noqa: F401 - also importable from here
from culture.io import atomic_dir, check_out_dir

#: id -> word for the 15 model tokens (cells 0..10 as hex digits, then markers)
TOKEN_WORDS: tuple[str, ...] = tuple(f"{i:x}" for i in range(11)) + ("X", "f_X", "Y", "f_Y")
UNK_TOKEN, UNK_TOKEN_ID = "[UNK]", 15
PAD_TOKEN, PAD_TOKEN_ID = "[PAD]", 16
BOS_TOKEN, BOS_TOKEN_ID = "0", 0
EOS_TOKEN, EOS_TOKEN_ID = PAD_TOKEN, PAD_TOKEN_ID
#: the full vocabulary, word -> id
VOCAB: dict[str, int] = {**{w: i for i, w in enumerate(TOKEN_WORDS)}, UNK_TOKEN: UNK_TOKEN_ID, PAD_TOKEN: PAD_TOKEN_ID}
MODEL_MAX_LENGTH = 405
#: ``name_or_path`` of a freshly built tokenizer (TransformerLens requires one)
TOKENIZER_NAME = "culture-tokenizer"


class TokenizerError(CultureError):
    """The tokenizer cannot be written or pushed."""


def build_tokenizer():
    """The culture tokenizer, a ``transformers.PreTrainedTokenizerFast`` (word
    level; see the module docstring for the vocabulary and special tokens)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel(dict(VOCAB), unk_token=UNK_TOKEN))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        name_or_path=TOKENIZER_NAME,
    )


# ------------------------------------------------------------------ plain text


def tokens_to_text(tokens) -> str | list[str]:
    """Token ids (one sequence, or a batch) to text, without ``transformers``:
    ``[0, 11, 0, 10]`` -> ``"0 X 0 a"``. A 2-D input gives a list of strings."""
    import torch

    t = torch.as_tensor(tokens)
    if t.dim() == 2:
        return [tokens_to_text(row) for row in t]  # type: ignore[misc]
    words = {i: w for w, i in VOCAB.items()}
    try:
        return " ".join(words[int(i)] for i in t.reshape(-1).tolist())
    except KeyError as exc:
        raise ValueError(f"token id {exc.args[0]} is not in the vocabulary (0..{len(VOCAB) - 1})") from None


def text_to_tokens(text: str):
    """Text to a LongTensor of ids, without ``transformers`` and without BOS:
    whitespace-separated words, unknown words -> 15 (``[UNK]``)."""
    import torch

    return torch.tensor([VOCAB.get(w, UNK_TOKEN_ID) for w in text.split()], dtype=torch.long)


# ------------------------------------------------------------------ save / push


def save_tokenizer(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the tokenizer (``save_pretrained``) to ``out`` atomically: it is
    written to a temporary folder next to ``out`` and renamed into place, so
    ``out`` is either the complete tokenizer or untouched. An existing
    non-empty ``out`` is replaced only with ``overwrite``."""
    out = Path(out)
    check_out_dir(out, overwrite, TokenizerError)
    with atomic_dir(out) as tmp:
        build_tokenizer().save_pretrained(str(tmp))
    return out


def push_tokenizer(repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Push the tokenizer to the hub repo ``repo_id`` (``push_to_hub``).

    Raises a one-line :class:`CultureError` when offline or when the hub
    refuses. Returns what ``push_to_hub`` returns (the commit info) as text.
    """
    check_push("tokenizer", repo_id)
    tokenizer = build_tokenizer()
    try:
        result = tokenizer.push_to_hub(repo_id, private=private, token=token)
    except Exception as exc:  # noqa: BLE001 - network, auth, refusal: one line
        raise push_error("tokenizer", repo_id, exc) from None
    return str(getattr(result, "commit_url", None) or result or f"https://huggingface.co/{repo_id}")
