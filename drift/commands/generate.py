"""`drift run` and `drift chat`, in llama.cpp's spirit: the generated text alone on stdout,
streamed; the figures on stderr."""

from __future__ import annotations

import argparse
import sys

from drift.commands._common import add_model_arguments, load_engine
from drift.errors import ContextOverflowError, InvalidArgumentError
from drift.runtime.sampler import SamplerConfig


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="generate from a prompt",
                         description="Generate text. With one positional argument it is the "
                                     "prompt and the model is the default one; '-' reads the "
                                     "prompt from stdin.")
    run.add_argument("args", nargs="+", metavar="[MODEL] PROMPT")
    add_model_arguments(run, positional=False)
    _add_sampling_arguments(run)
    run.add_argument("--raw", action="store_true",
                     help="continue the prompt exactly as given, without the chat template")
    run.add_argument("--system", default=None, help="system message (chat template only)")
    run.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    run.add_argument("-q", "--quiet", action="store_true", help="no figures on stderr")
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser("chat", help="talk with a model, keeping the conversation")
    add_model_arguments(chat)
    _add_sampling_arguments(chat)
    chat.add_argument("--system", default=None, help="system message")
    chat.set_defaults(func=cmd_chat)


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--max-tokens", type=int, default=256,
                   help="tokens to generate (default: %(default)s)")
    p.add_argument("--temp", type=float, default=0.8,
                   help="temperature; 0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=40, help="0 = off (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.95, help="1 = off (default: %(default)s)")
    p.add_argument("--min-p", type=float, default=0.05, help="0 = off (default: %(default)s)")
    p.add_argument("--repeat-penalty", type=float, default=1.0,
                   help="1 = off (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="default: a random one")


def _sampling(args: argparse.Namespace) -> SamplerConfig:
    if args.max_tokens < 0:
        raise InvalidArgumentError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    return SamplerConfig(args.temp, args.top_k, args.top_p, args.min_p, args.repeat_penalty,
                         seed=args.seed)


def _open(args: argparse.Namespace):
    from drift.api import LLM

    sampling = _sampling(args)  # bad values fail before minutes of loading
    llm = LLM(load_engine(args, progress=True if sys.stderr.isatty() else "lines"))
    return llm, sampling


def cmd_run(args: argparse.Namespace) -> int:
    if len(args.args) > 2:
        raise InvalidArgumentError("expected [MODEL] PROMPT (quote a prompt with spaces)")
    args.model, prompt = (None, args.args[0]) if len(args.args) == 1 else args.args
    if prompt == "-":
        prompt = sys.stdin.buffer.read().decode("utf-8", "replace")  # bytes that are not UTF-8
        # become U+FFFD, as an argument's do (tokenizer.valid_text)
    llm, sampling = _open(args)
    # Like ollama: the file's own template wraps the prompt. A file without one is continued
    # as given (drift's fallback templates are for `drift chat` only: a base model, which is
    # what such files usually hold, answers a chat-formatted prompt badly).
    template = llm.chat_template
    if args.raw or template is None or template.fallback:
        ids = llm.encode_prompt(prompt)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        ids = llm.encode_prompt(llm.render_chat(messages + [{"role": "user", "content": prompt}]))
    _stream_out(llm, ids, sampling, args.max_tokens, args.stop)
    if not args.quiet:
        print(f"[{llm.engine.backend.name}] {llm.last_stats.summary(llm.engine.load_seconds)}",
              file=sys.stderr)
    return 0


def _stream_out(llm, ids: list[int], sampling: SamplerConfig, max_tokens: int,
                stop: list[str], interruptible: bool = False) -> str:
    """Stream the answer to stdout; returns it. With `interruptible`, Ctrl-C ends the answer
    (what was written so far is returned) instead of the program."""
    from drift.runtime.generate import GenerationStats, stream

    llm.last_stats = GenerationStats()
    pieces = []
    try:
        for piece in stream(llm.engine, llm.tokenizer, ids, sampling, max_tokens, stop,
                            llm.tokenizer.stop_ids, llm.last_stats):
            sys.stdout.write(piece)
            sys.stdout.flush()
            pieces.append(piece)
    except KeyboardInterrupt:
        if not interruptible:
            raise
        llm.last_stats.finish_reason = "interrupted"
    sys.stdout.write("\n")
    sys.stdout.flush()
    if llm.last_stats.finish_reason == "context":
        print(f"[stopped: the context of {llm.engine.ctx} tokens is full (raise --ctx, up to "
              f"{llm.engine.config.ctx_train})]", file=sys.stderr)
    elif llm.last_stats.finish_reason == "interrupted":
        print("[interrupted]", file=sys.stderr)
    return "".join(pieces)


def cmd_chat(args: argparse.Namespace) -> int:
    llm, sampling = _open(args)
    if llm.chat_template is None:
        raise InvalidArgumentError(f"{llm.engine.path.name} has no chat template; use drift run")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # a line that is not UTF-8 is still a line
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"drift chat with {llm.engine.path.name} on {llm.engine.backend.name}. "
              "/reset clears the conversation, /exit or Ctrl-D leaves.", file=sys.stderr)
    while True:
        if interactive:
            print(">>> ", end="", file=sys.stderr, flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            if not interactive:
                raise
            print("\n(/exit or Ctrl-D leaves)", file=sys.stderr)
            continue
        if not line:
            break
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit", "/bye"):
            break
        if text.strip() == "/reset":
            messages = messages[:1] if args.system else []
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        ids = _fit_history(llm, messages, bool(args.system), args.max_tokens)
        answer = _stream_out(llm, ids, sampling, args.max_tokens, [], interruptible=interactive)
        messages.append({"role": "assistant", "content": answer})
        if interactive:
            print(f"[{llm.last_stats.summary()}]", file=sys.stderr)
    return 0


def _fit_history(llm, messages: list[dict], has_system: bool, max_tokens: int) -> list[int]:
    """The prompt for the conversation, forgetting its oldest turns (in place) while it would
    leave no room for an answer; the system message and the new question always stay."""
    first = 1 if has_system else 0
    while True:
        ids = llm.encode_prompt(llm.render_chat(messages))
        if len(ids) + min(max_tokens, 64) <= llm.engine.ctx or len(messages) - first <= 1:
            break
        del messages[first : first + 2]  # the oldest question and its answer
        print("[context full: the oldest turn is forgotten]", file=sys.stderr)
    if len(ids) >= llm.engine.ctx:
        raise ContextOverflowError(
            f"the message is {len(ids)} tokens; the context holds {llm.engine.ctx} (raise --ctx)"
        )
    return ids
