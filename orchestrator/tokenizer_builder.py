"""Trains a byte-level BPE tokenizer on a seeded synthetic corpus and writes it in the
Hugging Face format (tokenizer.json + tokenizer_config.json with a ChatML chat template)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, IM_START, IM_END, PAD = "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<pad>"
SPECIAL_TOKENS = [BOS, EOS, IM_START, IM_END, PAD]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to in and or is was are be been it that this with for on as at by from "
    "model token cache block layer request replica decode prefill memory pipeline weight "
    "stream latency throughput cluster node pool clock energy power queue batch step "
    "tide river ocean wave moon sun star light dark water stone tree leaf wind rain "
    "red green blue white black small large fast slow early late first last new old "
    "one two three four five six seven eight nine ten hundred thousand "
    "run serve move drop restore migrate route scale send load save copy read write "
    "def return class import if else for while try except with yield lambda None True False"
).split()
_PUNCTUATION = [".", ",", "?", "!", ":", ";", "(", ")", "=", "+", "-", "\n"]


def synthetic_corpus(rng: random.Random, num_lines: int = 4000) -> list[str]:
    """Seeded pseudo-text mixing words, numbers, punctuation and code-like lines."""
    lines = []
    for _ in range(num_lines):
        parts = []
        for _ in range(rng.randint(4, 24)):
            roll = rng.random()
            if roll < 0.75:
                word = rng.choice(_WORDS)
                parts.append(word.capitalize() if rng.random() < 0.1 else word)
            elif roll < 0.88:
                parts.append(str(rng.randint(0, 10_000)))
            else:
                parts.append(rng.choice(_PUNCTUATION))
        lines.append(" ".join(parts))
    return lines


@dataclass(frozen=True)
class SpecialTokenIds:
    bos_token_id: int
    eos_token_id: int


def build_tokenizer_files(out_dir: Path, vocab_size: int, rng: random.Random) -> SpecialTokenIds:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(synthetic_corpus(rng), trainer=trainer)
    bos_id, eos_id = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": True,
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special_tokens_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens_map, indent=2) + "\n")
    return SpecialTokenIds(bos_token_id=bos_id, eos_token_id=eos_id)
