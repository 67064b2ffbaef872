"""Chat templates rendered by drift against transformers' rendering of the same template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drift.errors import DriftError
from drift.tokenizer import ChatTemplate
from drift.tokenizer.chat import FALLBACK_TEMPLATES
from tests.tokenizer import drift_tokenizer, gguf_metadata, transformers_tokenizer

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
    ],
    "multi_turn": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "  How are you?\n"},
    ],
    "no_system_multi_turn": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? <|im_end|> is text here"},
    ],
    "unicode": [{"role": "user", "content": "Translate: 你好 👋 مرحبا"}],
}


def _render_with_transformers(
    template: str, messages: list[dict], add_generation_prompt: bool, **variables: str
) -> str:
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    rendered, _ = utils.render_jinja_template(
        conversations=[messages],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        **variables,
    )
    return rendered[0]


@pytest.fixture(scope="module")
def smollm2_template(smollm2_path: Path) -> ChatTemplate:
    template = ChatTemplate.from_metadata(gguf_metadata(smollm2_path))
    assert template is not None and not template.fallback
    return template


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", CONVERSATIONS)
def test_smollm2_renders_as_transformers(
    smollm2_path: Path, smollm2_template: ChatTemplate, name: str, add_generation_prompt: bool
) -> None:
    messages = CONVERSATIONS[name]
    ref = transformers_tokenizer(smollm2_path).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert smollm2_template.render(messages, add_generation_prompt) == ref


@pytest.mark.slow
def test_smollm2_prompt_ids_match_transformers(
    smollm2_path: Path, smollm2_template: ChatTemplate
) -> None:
    """The rendered prompt tokenizes (special tokens parsed, BOS as the file says) to what
    transformers' apply_chat_template(tokenize=True) gives."""
    messages = CONVERSATIONS["multi_turn"]
    ref = transformers_tokenizer(smollm2_path).apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True
    )
    ours = drift_tokenizer(smollm2_path).encode(smollm2_template.render(messages))
    assert ours == ref["input_ids"]


@pytest.mark.slow
def test_gemma3_file_gets_the_fallback(gemma3_path: Path) -> None:
    metadata = gguf_metadata(gemma3_path)
    assert "tokenizer.chat_template" not in metadata
    template = ChatTemplate.from_metadata(metadata)
    assert template is not None and template.fallback
    assert template.render(CONVERSATIONS["user"]) == (
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


GEMMA_METADATA = {
    "general.architecture": "gemma3",
    "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<unk>"],
    "tokenizer.ggml.padding_token_id": 0,
    "tokenizer.ggml.eos_token_id": 1,
    "tokenizer.ggml.bos_token_id": 2,
    "tokenizer.ggml.unknown_token_id": 3,
}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", CONVERSATIONS)
def test_gemma_fallback_renders_as_transformers(name: str, add_generation_prompt: bool) -> None:
    template = ChatTemplate.from_metadata(GEMMA_METADATA)
    assert template is not None and template.fallback
    messages = CONVERSATIONS[name]
    ref = _render_with_transformers(
        FALLBACK_TEMPLATES["gemma3"],
        messages,
        add_generation_prompt,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    assert template.render(messages, add_generation_prompt) == ref


def test_gemma_fallback_turn_format() -> None:
    template = ChatTemplate.from_metadata(GEMMA_METADATA)
    assert template is not None
    assert template.render(CONVERSATIONS["multi_turn"]) == (
        "<bos><start_of_turn>user\nAnswer in French.\n\nHello!<end_of_turn>\n"
        "<start_of_turn>model\nBonjour !<end_of_turn>\n"
        "<start_of_turn>user\nHow are you?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert template.render(CONVERSATIONS["user"], add_generation_prompt=False).endswith(
        "<end_of_turn>\n"
    )


def test_gemma_fallback_rejects_non_alternating_roles() -> None:
    template = ChatTemplate.from_metadata(GEMMA_METADATA)
    assert template is not None
    with pytest.raises(DriftError, match="roles must alternate") as err:
        template.render([{"role": "assistant", "content": "I speak first"}])
    assert "\n" not in str(err.value)


def test_no_template_and_unknown_architecture_gives_none() -> None:
    assert ChatTemplate.from_metadata({**GEMMA_METADATA, "general.architecture": "llama"}) is None


def test_file_template_wins_over_fallback() -> None:
    template = ChatTemplate.from_metadata({**GEMMA_METADATA, "tokenizer.chat_template": "x"})
    assert template is not None and not template.fallback and template.render([]) == "x"


# Small templates exercising each piece of the environment transformers builds.
ENVIRONMENT_TEMPLATES = {
    "trim_and_lstrip_blocks": "{% for m in messages %}\n    {% if m.role == 'user' %}\n"
    "U:{{ m.content }}\n    {% endif %}\n{% endfor %}",
    "tojson": "{{ messages | tojson }}|{{ {'b': 1, 'a': [1, 2]} | tojson(indent=2) }}",
    "special_tokens": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
    "loopcontrols": "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
    "{{ m.content }}{% endfor %}",
    "namespace": "{% set ns = namespace(n=0) %}{% for m in messages %}"
    "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
    "dict": "{{ dict(a=1) | tojson }}",
    "generation_tag": "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
    "{% endfor %}",
    "tools_and_documents": "{{ tools is none }}{{ documents is none }}{{ add_generation_prompt }}",
    "reasoning_alias": "{% for m in messages %}{{ m.reasoning_content }}/{{ m.thinking }}"
    "{% endfor %}",
}
ENVIRONMENT_MESSAGES = [
    {"role": "user", "content": 'héllo "quoted" <b>'},
    {"role": "assistant", "content": "ok", "reasoning": "because"},
]


@pytest.mark.parametrize("name", ENVIRONMENT_TEMPLATES)
def test_environment_matches_transformers(name: str) -> None:
    source = ENVIRONMENT_TEMPLATES[name]
    variables = {"bos_token": "<s>", "eos_token": "</s>"}
    ours = ChatTemplate(source, variables).render(ENVIRONMENT_MESSAGES)
    ref = _render_with_transformers(source, ENVIRONMENT_MESSAGES, True, **variables)
    assert ours == ref


@pytest.mark.slow
def test_keys_set_to_none_are_dropped_as_transformers_does(smollm2_path: Path) -> None:
    source = "{% for m in messages %}{{ 'name' in m }},{{ m.content }};{% endfor %}"
    messages = [{"role": "user", "content": "hi", "name": None}, {"role": "user", "name": "x"}]
    ref = transformers_tokenizer(smollm2_path).apply_chat_template(
        messages, chat_template=source, tokenize=False
    )
    assert ChatTemplate(source, {}).render(messages) == ref == "False,hi;True,;"


def test_rich_values_become_plain_as_in_transformers() -> None:
    np = pytest.importorskip("numpy")
    source = "{% for m in messages %}{{ m.n + 1 }} {{ m.flag }} {{ m.obj }};{% endfor %}"
    messages = [{"role": "user", "n": np.int64(3), "flag": np.bool_(False), "obj": object()}]
    ref = _render_with_transformers(source, messages, True)
    assert ChatTemplate(source, {}).render(messages) == ref == "4 False <object>;"


def test_strftime_now() -> None:
    year = ChatTemplate("{{ strftime_now('%Y') }}", {}).render([])
    assert year.isdigit() and len(year) == 4


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("{{ raise_exception('no system role here') }}", "no system role here"),
        ("{{ messages[5].content }}", "chat template failed"),
        ("{{ ''.__class__.__mro__ }}", "chat template failed"),  # the sandbox refuses
        ("{% set ns = namespace(_x=1) %}", "underscore"),
        ("{{ [].append(1) }}", "chat template failed"),  # immutable sandbox
    ],
)
def test_template_failure_is_one_line_drift_error(source: str, match: str) -> None:
    template = ChatTemplate(source, {})
    with pytest.raises(DriftError, match=match) as err:
        template.render([{"role": "user", "content": "hi"}])
    assert "\n" not in str(err.value)


def test_template_syntax_error_is_drift_error() -> None:
    with pytest.raises(DriftError, match=r"does not compile \(line 2\)") as err:
        ChatTemplate.from_metadata({"tokenizer.chat_template": "ok\n{% if %}"})
    assert "\n" not in str(err.value)


def test_messages_are_not_modified() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "x", "reasoning": "r"}]
    ChatTemplate("{{ messages }}", {}).render(messages)
    assert messages == [{"role": "user", "content": "x", "reasoning": "r"}]
