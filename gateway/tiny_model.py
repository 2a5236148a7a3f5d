"""Build the tiny offline model: a random-weight Llama with a byte-level BPE tokenizer.

No model hub is reachable on the machines this project is developed and tested on,
so the demo, the tests and the benchmarks run on a model made on the spot. Its
output is gibberish; it exercises the whole pipeline and measures speed.
The build is deterministic: the same seed and shape give the same files.
`ModelShape` sizes it: the tiny default (about 300 KB), or larger ones whose
prefill costs what a real model's does on a CPU (the routing benchmark's).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 512

# ChatML, the format many current chat models use; `<|im_end|>` is the EOS token. Tools follow the
# Hermes convention (Qwen 2.5 and Hermes 2 Pro): a system turn lists the function signatures in
# <tools>, the assistant calls them inside <tool_call> tags, results come back in <tool_response>.
# That is what vLLM's `--tool-call-parser hermes` reads, so the real clients can run tool loops on the
# tiny model. A conversation without tools renders exactly as plain ChatML.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and tools and loop.first %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + (message['content'] or '') + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set function = call['function'] if call.get('function') else call %}"
    "{%- if message['content'] or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + function['name'] + '\", \"arguments\": ' }}"
    "{%- if function['arguments'] is string %}{{- function['arguments'] }}"
    "{%- else %}{{- function['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# A word list reads better as prose than as a list literal.
_WORDS = (  # noqa: SIM905
    "the a an gateway stream token model answer question chat session cookie engine queue slot request "
    "response server client browser prompt turn history cache fast slow ready busy error done delta event "
    "user assistant system hello world こんにちは 会話 履歴 ストリーム 日本語 "
    "émigré naïve café 🙂 ✓ 0 1 2 3 4 5 6 7 8 9"
).split(" ")


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(2000)]
    lines.append("".join(chr(c) for c in range(32, 127)))
    return lines


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A Llama's size. The CPU attention kernels need a head size of 64: hidden_size = 64 x heads."""

    hidden_size: int = 128
    intermediate_size: int = 256
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1

    @classmethod
    def scaled(cls, hidden_size: int, layers: int) -> ModelShape:
        """A shape in the usual proportions (MLP 2.75x, a quarter as many KV heads) for this width and depth."""
        heads = hidden_size // 64
        return cls(hidden_size, hidden_size * 11 // 4, layers, heads, max(1, heads // 4))

    def parameters(self, vocab_size: int = VOCAB_SIZE) -> int:
        """How many weights a model of this shape has (embeddings tied)."""
        kv = self.kv_heads * 64
        attention = 2 * self.hidden_size * self.hidden_size + 2 * self.hidden_size * kv
        mlp = 3 * self.hidden_size * self.intermediate_size
        norms = 2 * self.hidden_size
        return self.layers * (attention + mlp + norms) + vocab_size * self.hidden_size + self.hidden_size


TINY = ModelShape()


def build_tiny_model(directory: str | Path, seed: int = 0, shape: ModelShape = TINY) -> Path:
    """Write the model (config, weights, tokenizer, chat template) into `directory`: the tiny one unless `shape`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    eos_id = tokenizer.token_to_id("<|im_end|>")
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=64,  # the CPU attention kernels reject head_dim=16
        max_position_embeddings=4096,
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=eos_id,
        pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.to(dtype=torch.bfloat16)  # type: ignore[call-arg]  # transformers' stub of .to is wrong
    model.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}) + "\n")
    return out


def is_model_dir(directory: str | Path) -> bool:
    """True when `directory` already holds a model this module (or anyone) wrote."""
    d = Path(directory)
    return (d / "config.json").is_file() and (d / "tokenizer.json").is_file()
