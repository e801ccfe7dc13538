"""Engine-independent processing: stop strings across token boundaries, incremental
detokenization, the per-choice output processor, chat templates and parameter validation."""

from __future__ import annotations

import pytest
from swiftmesh.services.gateway.engines.processing import (
    IncrementalDetokenizer,
    SequenceProcessor,
    StopStringMatcher,
    TokenizerBundle,
)
from swiftmesh.services.gateway.engines.types import (
    ChatMessage,
    ChatPrompt,
    SamplingParams,
    StructuredOutput,
)

from swiftmesh.runtime.errors import InvalidArgument


@pytest.fixture(scope="module")
def bundle(tiny_model_dir) -> TokenizerBundle:
    return TokenizerBundle.from_pretrained(tiny_model_dir)


def test_stop_string_split_over_pieces_is_found_and_held_back():
    m = StopStringMatcher(["STOP"])
    assert m.feed("hello S") == ("hello ", None)  # "S" could start "STOP": held
    assert m.feed("T") == ("", None)
    assert m.feed("Ox") == ("ST" + "Ox", None)  # not a stop after all: released
    assert m.feed("yy ST") == ("yy ", None)
    assert m.feed("OP and more") == ("", "STOP")


def test_stop_string_earliest_of_several_wins_and_text_is_cut():
    m = StopStringMatcher(["lazy", "fox"])
    text, stop = m.feed("the quick brown fox jumps over the lazy dog")
    assert (text, stop) == ("the quick brown ", "fox")


def test_stop_strings_not_checked_when_disabled_then_flushed():
    m = StopStringMatcher(["ab"])
    assert m.feed("xa", check=False) == ("x", None)  # "a" may start "ab": held
    assert m.feed("b", check=False) == ("ab", None)  # before min_tokens a stop string does not stop
    assert m.feed("za") == ("z", None)
    assert m.flush() == "a"


def test_detokenizer_deltas_join_to_the_full_decode(bundle):
    text = "The capital of France is Paris. 0123 é ü 😀 done"
    ids = bundle.encode(text, add_special_tokens=False)
    prompt = bundle.encode("hello there", add_special_tokens=False)
    d = IncrementalDetokenizer(bundle, prompt)
    pieces = [d.add(t) for t in ids]
    pieces.append(d.flush())
    assert "".join(pieces) == bundle.decode(ids)
    assert "\ufffd" not in "".join(pieces)
    # the emoji's bytes span several byte-level tokens: no piece may end in a broken character
    assert all(not p.endswith("\ufffd") for p in pieces)


def test_sequence_processor_stop_string_across_token_boundary(bundle):
    text = "I am SmolLM, an AI assistant trained by Hugging Face."
    ids = bundle.encode(text, add_special_tokens=False)
    # a stop string made of the end of one token and the start of the next
    pieces = [bundle.decode(ids[: i + 1]) for i in range(len(ids))]
    k = next(i for i in range(1, len(ids)) if len(pieces[i]) - len(pieces[i - 1]) >= 2 and len(pieces[i - 1]) >= 2)
    boundary = len(pieces[k - 1])
    stop = text[boundary - 1: boundary + 1]
    assert bundle.decode(ids[:k]).endswith(stop[0]) and not bundle.decode(ids[:k]).endswith(stop)
    proc = SequenceProcessor(bundle, 0, bundle.encode("hi"), max_tokens=100, stop=[stop])
    done_at = None
    for j, t in enumerate(ids):
        if proc.add_token(t):
            done_at = j
            break
    assert done_at == k
    d = proc.take_delta()
    assert d.finish_reason == "stop" and d.stop_reason == stop
    assert d.text == text[: text.index(stop)]
    assert proc.take_delta() is None


def test_sequence_processor_eos_length_and_min_tokens(bundle):
    eos = bundle.eos_token_ids[0]
    ids = bundle.encode(" one two three", add_special_tokens=False)
    p = SequenceProcessor(bundle, 0, [1], max_tokens=10)
    assert not p.add_token(ids[0])
    assert p.add_token(eos)
    d = p.take_delta()
    assert (d.finish_reason, d.stop_reason, d.token_ids) == ("stop", "", [ids[0], eos])
    assert d.text == bundle.decode([ids[0]])

    p = SequenceProcessor(bundle, 0, [1], max_tokens=10, min_tokens=3)
    assert not p.add_token(eos)  # too early to stop
    p = SequenceProcessor(bundle, 1, [1], max_tokens=2, stop_token_ids=[ids[1]])
    assert not p.add_token(ids[0]) and p.add_token(ids[1])
    d = p.take_delta()
    assert (d.index, d.finish_reason, d.stop_reason) == (1, "stop", str(ids[1]))

    p = SequenceProcessor(bundle, 0, [1], max_tokens=2, ignore_eos=True)
    assert not p.add_token(eos)
    assert p.add_token(ids[0])
    assert p.take_delta().finish_reason == "length"


def test_chat_template_and_missing_template(bundle, tmp_path):
    chat = ChatPrompt([ChatMessage("user", "hello")])
    ids, text = bundle.prompt_ids(chat)
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhello<|im_end|>" in text
    assert ids == bundle.encode(text, add_special_tokens=False)

    from swiftmesh.testing.tiny import make_tiny_llama

    plain = TokenizerBundle.from_pretrained(make_tiny_llama(tmp_path / "plain", chat_template=False))
    with pytest.raises(InvalidArgument) as e:
        plain.prompt_ids(chat, model="plain")
    assert e.value.reason == "NO_CHAT_TEMPLATE" and "chat template" in e.value.message


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (SamplingParams(temperature=-0.1), "sampling.temperature"),
        (SamplingParams(top_p=0.0), "sampling.top_p"),
        (SamplingParams(logprobs=21), "sampling.logprobs"),
        (SamplingParams(prompt_logprobs=21), "sampling.prompt_logprobs"),
        (SamplingParams(presence_penalty=2.5), "sampling.presence_penalty"),
        (SamplingParams(n=0), "sampling.n"),
        (SamplingParams(stop=["ok", ""]), "sampling.stop[1]"),
        (SamplingParams(logit_bias={5: 101.0}), "sampling.logit_bias[5]"),
        (SamplingParams(logit_bias={10**6: 1.0}), "sampling.logit_bias[1000000]"),
        (SamplingParams(max_tokens=3, min_tokens=5), "sampling.min_tokens"),
        (SamplingParams(structured=StructuredOutput("json_schema", "{not json")), "sampling.structured_output.json_schema"),
    ],
)
def test_validation_names_the_bad_parameter(params, field):
    with pytest.raises(InvalidArgument) as e:
        params.validate(vocab_size=1000)
    assert field in [fv.field for fv in e.value.field_violations]
    assert field in e.value.message


def test_validation_accepts_defaults_and_edges():
    SamplingParams().validate(1000)
    SamplingParams(temperature=0, top_p=1, top_k=-1, logprobs=20, prompt_logprobs=0, n=128,
                   logit_bias={0: -100, 999: 100}, stop=["a"] * 16).validate(1000)
