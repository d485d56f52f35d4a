"""Batched generation over the test split: the predict rule and ``python -m afinar predict``.

Why it looks the way it does:

- Decoding one token costs about the same for 1 prompt as for 64 (the step is bound by reading the
  weights from memory), so prompts are generated in batches. They are **sorted by length** first, so
  a batch holds prompts of similar length and little compute is spent on padding; the longest batch
  runs first, so an out-of-memory error shows in the first seconds, not after an hour. Results are put
  back in the test split's order.
- Decoder-only models continue from the last position, so batches are **padded on the left**.
- A prompt longer than ``max_seq_length - max_new_tokens`` tokens is cut **in the middle**: the head
  keeps the task instructions and the tail keeps the end of the document and the chat template's
  generation prompt (without which the model would not answer at all). Each cut is logged as a warning
  and flagged (``truncado``) in the output, never silently.
- Greedy decoding unless ``predicao.temperatura > 0``, so two runs give the same predictions.
- The predictions file is written in one atomic rename at the end: an interrupted run leaves no file
  that Snakemake or a person could take as complete.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from afinar.config.checks import prompt_room_problem
from afinar.config.settings import section_defaults
from afinar.errors import AfinarError

log = logging.getLogger("afinar.predict.generation")

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
FULL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


# ----------------------------------------------------------------------------------------- settings


#: defaults come from config/schema.yaml only (for callers that build settings by hand: tests, benchmarks)
_PREDICAO = section_defaults("predicao")
_MAX_SEQ_LENGTH = int(section_defaults("treinamento")["max_seq_length"])


def _batch_setting(value: Any) -> int | None:
    """``predicao.batch_size``: None for ``auto`` (afinar.predict.batching), else a whole number."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise AfinarError(f"predicao.batch_size: {value!r} — use a positive whole number or auto")
    try:
        return int(value)
    except ValueError:
        raise AfinarError(f"predicao.batch_size: {value!r} — use a positive whole number or auto") from None


@dataclass(frozen=True)
class GenerationSettings:
    """What controls decoding; built from the experiment's ``predicao`` section and ``max_seq_length``."""

    batch_size: int | None = _batch_setting(_PREDICAO["batch_size"])  # None = auto; a speed setting only
    max_new_tokens: int = int(_PREDICAO["max_new_tokens"])
    temperatura: float = float(_PREDICAO["temperatura"])
    top_p: float = float(_PREDICAO["top_p"])
    n_exemplos: int = int(_PREDICAO["n_exemplos"])
    max_seq_length: int = _MAX_SEQ_LENGTH
    seed: int = 0

    @classmethod
    def from_config(cls, predicao: dict[str, Any], max_seq_length: int, seed: int = 0) -> GenerationSettings:
        """Read the normalized ``predicao`` section (keys of docs/architecture.md); missing keys take the schema's defaults."""
        p = {**_PREDICAO, **predicao}
        settings = cls(
            batch_size=_batch_setting(p["batch_size"]),
            max_new_tokens=int(p["max_new_tokens"]),
            temperatura=float(p["temperatura"] or 0.0),
            top_p=float(p["top_p"]),
            n_exemplos=int(p["n_exemplos"] or 0),
            max_seq_length=int(max_seq_length),
            seed=int(seed),
        )
        settings.check()
        return settings

    @property
    def sampling(self) -> bool:
        return self.temperatura > 0

    @property
    def max_prompt_tokens(self) -> int:
        return self.max_seq_length - self.max_new_tokens

    def check(self) -> None:
        """Reject settings that cannot work, naming the key to change."""
        if self.batch_size is not None and self.batch_size < 1:
            raise AfinarError(f"predicao.batch_size: {self.batch_size} — must be at least 1")
        if self.max_new_tokens < 1:
            raise AfinarError(f"predicao.max_new_tokens: {self.max_new_tokens} — must be at least 1")
        if not 0 < self.top_p <= 1:
            raise AfinarError(f"predicao.top_p: {self.top_p} — must be in (0, 1]")
        if self.temperatura < 0:
            raise AfinarError(f"predicao.temperatura: {self.temperatura} — must be 0 (greedy) or positive")
        problem = prompt_room_problem(self.max_seq_length, self.max_new_tokens)  # validate's own rule
        if problem:
            raise AfinarError(problem)


def run_config_predicao(raw_config: dict, exp: str) -> dict[str, Any]:
    """The experiment's ``predicao`` section, read from the run's config when the job runs.

    Settings that change speed but not results (``batch_size``) and ``comparar_base`` reach the predict
    jobs this way rather than as rule params, since Snakemake reruns a job whose params changed.
    """
    from afinar.config import experiments, load_config

    section: dict[str, Any] = experiments(load_config(dict(raw_config)))[exp]["predicao"]
    return section


# ------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class TestRecord:
    """One test example: the conversation up to the answer, and the expected answer."""

    id: str
    messages: list[dict[str, Any]]
    esperado: str

    @property
    def prompt(self) -> str:
        """The last user turn's text (what a person would call "the prompt")."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return content_text(message.get("content"))
        return content_text(self.messages[-1].get("content")) if self.messages else ""


@dataclass
class Prediction:
    """One line of ``predicoes/teste.jsonl``."""

    id: str
    prompt: str
    esperado: str
    gerado: str
    tokens_prompt: int
    tokens_saida: int
    segundos: float
    truncado: bool = False
    limite_atingido: bool = False

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def content_text(content: Any) -> str:
    """Message content as text: plain strings, or typed parts ``[{type: text, text: ...}]``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    parts = []
    for part in content:
        parts.append(part.get("text", "") if isinstance(part, dict) else str(part))
    return "".join(parts)


def _plain(value: Any) -> Any:
    """numpy arrays/structs from parquet → plain lists/dicts, so chat templates see ordinary Python."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def read_test_split(path: str | Path, n_exemplos: int = 0) -> list[TestRecord]:
    """Read ``results/data/teste.parquet`` (columns ``id``, ``messages``) in file order.

    The last message must be the assistant's expected answer; everything before it is the prompt.
    ``n_exemplos > 0`` keeps the first N records (file order, so the same N every time).
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise AfinarError(f"{path}: test split not found — build it with `snakemake {path}`")
    frame = pd.read_parquet(path)
    missing = {"id", "messages"} - set(frame.columns)
    if missing:
        raise AfinarError(f"{path}: missing column(s) {sorted(missing)} — rebuild it with `snakemake {path}`")
    if len(frame) == 0:
        raise AfinarError(
            f"{path}: the test split has zero records — give pastas.divisao.proporcao a non-zero teste share "
            "(or more data) and rerun"
        )
    if n_exemplos and n_exemplos > 0:
        frame = frame.head(n_exemplos)
    records = []
    for rid, messages in zip(frame["id"], frame["messages"], strict=True):
        messages = _plain(messages)
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise AfinarError(
                f"{path}: record {rid!r} does not end with an assistant answer — the test split needs "
                "user then assistant messages; rebuild it with the split rule"
            )
        records.append(TestRecord(str(rid), messages[:-1], content_text(messages[-1].get("content"))))
    return records


# ---------------------------------------------------------------------------------------- prompting


@dataclass
class EncodedPrompt:
    """Token ids of one rendered prompt, after any truncation."""

    index: int
    ids: list[int]
    truncated: bool = False
    original_length: int = 0


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding and a pad token (falling back to EOS, as most chat models ship without one)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise AfinarError(
                "tokenizer: it has neither a pad nor an eos token — fix the model's tokenizer files"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def render_prompts(tokenizer: Any, records: Sequence[TestRecord]) -> list[str]:
    """Each record's messages through the chat template, ending where training's answers began
    (:func:`afinar.train.chat.generation_prompt`)."""
    from afinar.train.chat import generation_prompt

    if not getattr(tokenizer, "chat_template", None):
        raise AfinarError(
            "tokenizer: no chat template — use an instruct/chat base model or one whose tokenizer defines "
            "chat_template (training saves the template it used next to the adapter)"
        )
    texts = []
    for record in records:
        try:
            text = generation_prompt(tokenizer, record.messages)  # the prefix training put before answers
        except Exception as exc:  # jinja errors (e.g. a template that rejects a system role)
            raise AfinarError(
                f"record {record.id!r}: the chat template failed ({str(exc).splitlines()[0]}) — check the "
                "messages' roles against the model's template"
            ) from None
        texts.append(text)
    return texts


def truncate_middle(ids: list[int], limit: int) -> list[int]:
    """Keep the first ``ceil(limit/2)`` and the last ``floor(limit/2)`` tokens."""
    if len(ids) <= limit:
        return ids
    head = (limit + 1) // 2
    tail = limit - head
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


def encode_prompts(
    tokenizer: Any, texts: Sequence[str], ids: Sequence[str], max_prompt_tokens: int
) -> list[EncodedPrompt]:
    """Tokenize rendered prompts (the template already holds BOS etc., so no special tokens are added)."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = []
    n_cut = 0
    for i, token_ids in enumerate(encoded):
        token_ids = list(token_ids)
        cut = len(token_ids) > max_prompt_tokens
        if cut:
            n_cut += 1
            log.warning(
                "record %s: prompt has %d tokens, more than max_seq_length - max_new_tokens = %d; "
                "cut in the middle (the start and the end are kept)",
                ids[i],
                len(token_ids),
                max_prompt_tokens,
            )
        out.append(EncodedPrompt(i, truncate_middle(token_ids, max_prompt_tokens), cut, len(token_ids)))
    if n_cut:
        log.warning(
            "%d of %d prompts were truncated (flagged truncado=true in the predictions)", n_cut, len(out)
        )
    return out


# --------------------------------------------------------------------------------------- generation


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the generation config's (Llama 3 lists several) and the tokenizer's."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if value is None:
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


def generation_config(model: Any, tokenizer: Any, settings: GenerationSettings) -> Any:
    """The model's own generation config with our decoding settings on top.

    Starting from the model's config keeps its stop tokens; sampling parameters it ships with (Llama's
    temperature 0.6, say) are reset for greedy decoding so that greedy really is greedy.
    """
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    cfg = copy.deepcopy(base) if base is not None else GenerationConfig()
    cfg.max_new_tokens = settings.max_new_tokens
    cfg.max_length = None
    cfg.min_new_tokens = None
    cfg.min_length = 0
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.eos_token_id = eos_token_ids(model, tokenizer) or None
    cfg.num_beams = 1
    cfg.use_cache = True
    cfg.do_sample = settings.sampling
    if settings.sampling:
        cfg.temperature = settings.temperatura
        cfg.top_p = settings.top_p
        cfg.top_k = None
    else:
        cfg.temperature = None
        cfg.top_p = None
        cfg.top_k = None
    return cfg


def _model_device(model: Any) -> Any:
    try:
        return next(p.device for p in model.parameters() if p.device.type != "meta")
    except StopIteration:
        import torch

        return torch.device("cpu")


def _output_length(row: list[int], stop_ids: set[int]) -> tuple[int, bool]:
    """(answer tokens before the first stop token, whether no stop token came = hit the token limit)."""
    for position, token in enumerate(row):
        if token in stop_ids:
            return position, False
    return len(row), True


#: decoding engines: "auto" = the static CUDA-graph decoder on a GPU where the model allows it, else
#: ``generate``; "generate" forces the old path (the benchmark's baseline), "static" the new one
ENGINES = ("auto", "static", "generate")


class _GenerateEngine:
    """``model.generate`` on one left-padded batch (the CPU path, and the fallback on a GPU)."""

    name = "generate"

    def __init__(self, model: Any, cfg: Any, pad: int) -> None:
        self.model, self.cfg, self.pad = model, cfg, pad
        self.device = _model_device(model)

    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            generation_config=self.cfg,
        )
        rows: list[list[int]] = out[:, width:].cpu().tolist()
        return rows

    def release(self) -> None:
        pass


def _is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None))


def choose_engine(
    model: Any, cfg: Any, tokenizer: Any, settings: GenerationSettings, engine: Any = "auto"
) -> Any:
    """The static CUDA-graph decoder where it applies (CUDA, an unquantized model with plain causal
    attention), else ``generate``. ``engine`` forces one (``static`` also runs eagerly on a CPU)."""
    from afinar.predict.decoding import Sampling, StaticDecoder

    if not isinstance(engine, str):
        return engine  # an engine object built by the caller (the benchmark's measured decoder)
    if engine not in ENGINES:
        raise AfinarError(f"engine: {engine!r} — use one of {', '.join(ENGINES)}")
    device = _model_device(model)
    static = engine == "static" or (engine == "auto" and device.type == "cuda" and not _is_quantized(model))
    if not static:
        return _GenerateEngine(model, cfg, tokenizer.pad_token_id)
    sampling = Sampling(settings.temperatura, settings.top_p) if settings.sampling else None
    decoder = StaticDecoder(
        model, tokenizer.pad_token_id, cfg.eos_token_id or [], settings.max_new_tokens, sampling=sampling
    )
    return decoder


def _batch_sizer(model: Any, settings: GenerationSettings, device: Any) -> Any:
    """A function (longest prompt length) → batch size: the fixed ``batch_size``, or ``auto``'s estimate."""
    from afinar.predict.batching import CPU_BATCH, MEMORY_SHARE, MemoryModel, auto_batch_size, free_gpu_bytes
    from afinar.predict.decoding import bucket_length

    if settings.batch_size is not None:
        fixed = settings.batch_size
        return lambda _length: fixed
    if device.type != "cuda":
        return lambda _length: CPU_BATCH
    memory = MemoryModel.of(model)
    budget = int(free_gpu_bytes() * MEMORY_SHARE)
    log.info("batch_size auto: planning with %.1f GB of free GPU memory", budget / 1e9)

    def size(length: int) -> int:
        prompt = bucket_length(length)
        return auto_batch_size(memory, budget, prompt, prompt + settings.max_new_tokens)

    return size


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def generate_predictions(
    model: Any,
    tokenizer: Any,
    records: Sequence[TestRecord],
    settings: GenerationSettings,
    desc: str = "predict",
    progress: bool = True,
    engine: Any = "auto",
) -> list[Prediction]:
    """Generate an answer for every record, longest prompts first; returns predictions in record order.

    Batches follow ``predicao.batch_size`` (a number, or ``auto``: sized from free GPU memory). An
    out-of-memory error halves the batch that hit it and retries it; predictions already made stay.
    """
    import torch

    if not records:
        raise AfinarError("test split: no records to predict — check predicao.n_exemplos and the test split")
    from afinar.predict.batching import ProgressLog
    from afinar.predict.decoding import Unsupported

    prepare_tokenizer(tokenizer)
    texts = render_prompts(tokenizer, records)
    prompts = encode_prompts(tokenizer, texts, [r.id for r in records], settings.max_prompt_tokens)
    cfg = generation_config(model, tokenizer, settings)
    stop_ids = set(cfg.eos_token_id or [])
    model.eval()
    device = _model_device(model)
    if settings.sampling:
        torch.manual_seed(settings.seed)
    decoder = choose_engine(model, cfg, tokenizer, settings, engine)
    size_for = _batch_sizer(model, settings, device)
    results: list[Prediction | None] = [None] * len(records)
    queue = sorted(prompts, key=lambda p: (-len(p.ids), p.index))
    cap = len(queue)  # lowered by out-of-memory errors
    meter = ProgressLog(desc, len(records), interval_s=15.0 if progress else math.inf)
    sizes: list[int] = []
    started = time.perf_counter()
    with torch.inference_mode():
        while queue:
            n = max(1, min(cap, size_for(len(queue[0].ids)), len(queue)))
            batch, rest = queue[:n], queue[n:]
            t0 = time.perf_counter()
            try:
                rows = decoder.generate([p.ids for p in batch])
            except Unsupported as exc:
                log.warning(
                    "%s: the static decoder does not handle this model (%s); decoding with generate",
                    desc,
                    exc,
                )
                decoder.release()
                decoder = _GenerateEngine(model, cfg, tokenizer.pad_token_id)
                continue
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                decoder.release()
                _free_cuda()
                if n == 1:
                    raise AfinarError(
                        f"record {records[batch[0].index].id}: out of GPU memory on a single prompt of "
                        f"{len(batch[0].ids)} tokens — lower predicao.max_new_tokens or treinamento.max_seq_length, "
                        "or use a GPU with more memory"
                    ) from None
                cap = n // 2
                log.warning(
                    "%s: out of GPU memory on a batch of %d prompts; retrying it in batches of %d",
                    desc,
                    n,
                    cap,
                )
                continue
            queue = rest
            sizes.append(n)
            seconds = (time.perf_counter() - t0) / n
            made = 0
            for p, row in zip(batch, rows, strict=True):
                n_out, hit_limit = _output_length(row, stop_ids)
                made += n_out
                text = tokenizer.decode(row[:n_out], skip_special_tokens=True).strip()
                record = records[p.index]
                results[p.index] = Prediction(
                    id=record.id,
                    prompt=record.prompt,
                    esperado=record.esperado,
                    gerado=text,
                    tokens_prompt=len(p.ids),
                    tokens_saida=n_out,
                    segundos=round(seconds, 4),
                    truncado=p.truncated,
                    limite_atingido=hit_limit,
                )
                log.debug("record %s: %d prompt tokens → %d output tokens", record.id, len(p.ids), n_out)
            meter.update(n, made)
    decoder.release()
    predictions = [p for p in results if p is not None]
    _log_summary(predictions, time.perf_counter() - started, settings, desc, decoder.name, sizes)
    return predictions


def _log_summary(
    predictions: Sequence[Prediction],
    elapsed: float,
    settings: GenerationSettings,
    desc: str,
    engine: str = "generate",
    sizes: Sequence[int] = (),
) -> None:
    n = len(predictions)
    out_tokens = sum(p.tokens_saida for p in predictions)
    log.info(
        "%s: %d records in %.1f s (%.1f output tokens/s, %s engine, %d batches of %s prompts%s, %s decoding)",
        desc,
        n,
        elapsed,
        out_tokens / elapsed if elapsed > 0 else math.nan,
        engine,
        len(sizes),
        f"{min(sizes)}-{max(sizes)}" if sizes and min(sizes) != max(sizes) else (sizes[0] if sizes else 0),
        "" if settings.batch_size else ", batch_size auto",
        f"sampling T={settings.temperatura} top_p={settings.top_p}" if settings.sampling else "greedy",
    )
    empty = [p.id for p in predictions if not p.gerado]
    if empty:
        log.warning(
            "%s: %d of %d generations are empty (ids %s%s) — they count as wrong answers",
            desc,
            len(empty),
            n,
            ", ".join(empty[:5]),
            ", ..." if len(empty) > 5 else "",
        )
    limited = sum(p.limite_atingido for p in predictions)
    if limited:
        log.warning(
            "%s: %d of %d generations stopped at max_new_tokens = %d without an end-of-turn token — "
            "raise predicao.max_new_tokens if answers look cut off",
            desc,
            limited,
            n,
            settings.max_new_tokens,
        )


# ------------------------------------------------------------------------------------------ loading


@dataclass
class LoadedModel:
    """A model ready for generation and what was loaded, for logs and the CLI's JSON."""

    model: Any
    tokenizer: Any
    source: str  # "adapter", "full" (lora.r = 0) or "base"
    backend: str
    notes: list[str] = field(default_factory=list)
    base: str = ""  # the resolved base model source (set by load_base)


def adapter_kind(folder: str | Path) -> str | None:
    """ "lora" (PEFT adapter files), "full" (a whole model, lora.r = 0) or None (nothing trained there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / "adapter_config.json").is_file() and any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
        return "lora"
    if (folder / "config.json").is_file() and any((folder / w).is_file() for w in FULL_WEIGHTS):
        return "full"
    return None


def resolve_backend(backend: str) -> str:
    """``auto`` → unsloth when it imports and CUDA is present, else transformers (afinar.runtime's rule)."""
    from afinar.runtime import for_prediction

    return for_prediction(backend).backend


def _torch_dtype(precisao: str = "auto") -> Any:
    """The dtype generation runs in: ``treinamento.precisao`` on CUDA, fp32 on a CPU (afinar.runtime)."""
    from afinar.runtime import for_prediction

    return for_prediction("transformers", precisao).dtype


def _effective_bits(nbits: int) -> int:
    """The bits the adapter was trained with; on a CPU (quantization needs CUDA) full precision instead,
    so a GPU-trained adapter can still be tried on a laptop."""
    import torch

    from afinar.train.models import check_quantization

    if nbits in (4, 8) and not torch.cuda.is_available():
        log.warning(
            "treinamento.nbits %d: quantized loading needs CUDA; loading in full precision on CPU", nbits
        )
        return 16
    check_quantization(nbits, torch.cuda.is_available())
    return nbits if nbits in (4, 8) else 16


def _load_base_transformers(source: str, nbits: int, precisao: str = "auto") -> tuple[Any, int]:
    """The base model for prediction and the bits it was loaded with.

    An adapter trained on a 4/8-bit base is predicted on the de-quantised (bf16) base where it fits in
    GPU memory, as the export does: the adapter can then be merged into the weights and the model
    decoded by the static CUDA-graph decoder. Where it does not fit, the quantized base is loaded.
    """
    import torch

    from afinar.train.models import load_causal_lm

    bits = _effective_bits(nbits)
    if bits in (4, 8):
        try:
            model = load_causal_lm(source, _torch_dtype(precisao), 16).to("cuda")
            log.info(
                "treinamento.nbits %d: predicting on the de-quantised %s base (the adapter is merged into it)",
                bits,
                _torch_dtype(precisao),
            )
            return model, 16
        except torch.OutOfMemoryError:
            model = None
            _free_cuda()
            log.warning(
                "treinamento.nbits %d: the de-quantised base does not fit in GPU memory; loading it in %d bits",
                bits,
                bits,
            )
    model = load_causal_lm(source, _torch_dtype(precisao), bits)
    if bits == 16 and torch.cuda.is_available():
        model = model.to("cuda")
    return model, bits


def _attach_adapter(model: Any, base: str, adapter_dir: Path) -> Any:
    """Load the PEFT adapter onto ``model``; any mismatch becomes one error naming both models.

    A different recorded base name alone is only a warning: the same weights are often reached by
    different names (a hub id during training, a local copy on the cluster). Shapes or module names
    that do not fit are an error.
    """
    from peft import PeftModel

    from afinar.train.models import adapter_base_model, same_model

    recorded = adapter_base_model(adapter_dir)
    if recorded and not same_model(recorded, base):
        log.warning(
            "%s was trained on %r but modelo.base is %r; loading it anyway (same weights under another name?)",
            adapter_dir,
            recorded,
            base,
        )
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise AfinarError(
            f"{adapter_dir}: the adapter does not fit modelo.base {base!r} — it was trained on "
            f"{recorded or 'an unrecorded base model'!r} ({(size[0] if size else first)[:200]}); set modelo.base "
            "to the model it was trained on, or retrain the adapter"
        ) from None


def load_for_inference(
    base: str,
    adapter_dir: str | Path | None,
    backend: str = "auto",
    nbits: int = 0,
    max_seq_length: int = 4096,
    precisao: str = "auto",
    merge: bool = True,
) -> LoadedModel:
    """Load the base model (+ the trained adapter in ``adapter_dir``, unless None) ready for generation.

    ``adapter_dir`` may hold a PEFT adapter or a full model (``lora.r: 0``); anything else is an error
    that says how to train it. The tokenizer saved next to the adapter wins over the base model's, since
    it carries the chat template training used; a base tokenizer without a template gets the same family
    fallback training would install (``afinar.train.chat``).

    Prediction always loads with transformers + PEFT, whatever ``treinamento.backend`` trained the
    adapter (it is a plain PEFT adapter either way): the static CUDA-graph decoder needs the model's own
    forward, not a patched one. ``backend`` and ``max_seq_length`` are kept for the callers' sake.
    """
    del backend, max_seq_length
    kind = None
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        kind = adapter_kind(adapter_dir)
        if kind is None:
            raise AfinarError(
                f"{adapter_dir}: no trained adapter there (adapter_config.json + adapter_model.safetensors, or a "
                f"full model) — train it first: `snakemake {adapter_dir}`, or predict with the base model"
            )
    if kind == "full":
        from afinar.train.chat import ensure_chat_template
        from afinar.train.models import load_tokenizer

        model, _bits = _load_base_transformers(str(adapter_dir), nbits, precisao)
        tokenizer = load_tokenizer(str(adapter_dir))
        ensure_chat_template(tokenizer, base)
        return _ready(LoadedModel(model, tokenizer, "full", "transformers"), adapter_dir)
    loaded = load_base(base, nbits, precisao)
    if kind == "lora" and adapter_dir is not None:
        loaded = apply_adapter(loaded, base, adapter_dir, merge=merge)
    return loaded


def load_base(base: str, nbits: int = 0, precisao: str = "auto") -> LoadedModel:
    """The base model and its tokenizer (the ``predict_base`` rule, and the first half of ``predict``)."""
    from afinar.train.chat import ensure_chat_template
    from afinar.train.models import load_tokenizer, resolve_model_source

    source = resolve_model_source(base)
    model, bits = _load_base_transformers(source, nbits, precisao)
    tokenizer = load_tokenizer(source)
    ensure_chat_template(tokenizer, source)
    loaded = LoadedModel(model, tokenizer, "base", "transformers")
    loaded.notes.append(f"bits={bits}")
    loaded.base = source
    return _ready(loaded, source)


def apply_adapter(loaded: LoadedModel, base: str, adapter_dir: str | Path, merge: bool = True) -> LoadedModel:
    """Put the trained LoRA adapter on a loaded base model, merged into its weights unless the base is
    quantized (or ``merge`` is False): a merged model decodes at the base model's speed, with no adapter
    matmuls. The adapter's own tokenizer (with the template training used) replaces the base's."""
    from afinar.train.chat import ensure_chat_template
    from afinar.train.models import load_tokenizer

    adapter_dir = Path(adapter_dir)
    source = loaded.base or base
    model = _attach_adapter(loaded.model, source, adapter_dir)
    merged = merge and not _is_quantized(loaded.model)
    if merged:
        model = model.merge_and_unload()
    tokenizer = loaded.tokenizer
    if any((adapter_dir / f).is_file() for f in TOKENIZER_FILES):
        tokenizer = load_tokenizer(str(adapter_dir))
        ensure_chat_template(tokenizer, source)
    out = LoadedModel(model, tokenizer, "adapter", "transformers", [*loaded.notes, f"merged={merged}"])
    log.info("adapter %s %s", adapter_dir, "merged into the base weights" if merged else "applied unmerged")
    return _ready(out, adapter_dir)


def _ready(loaded: LoadedModel, origin: Any) -> LoadedModel:
    loaded.model.eval()
    prepare_tokenizer(loaded.tokenizer)
    log.info("loaded the %s model from %s", loaded.source, origin)
    return loaded


# ------------------------------------------------------------------------------------------ the rule


def write_predictions(path: str | Path, predictions: Sequence[Prediction]) -> None:
    """Atomic JSONL with mode 0600: it holds decrypted prompts and answers."""
    from afinar.io import atomic_write_jsonl

    atomic_write_jsonl(path, (p.as_row() for p in predictions), mode=0o600)


def run_prediction(
    test_split: str | Path,
    out_path: str | Path,
    base: str,
    adapter_dir: str | Path | None,
    settings: GenerationSettings,
    backend: str = "auto",
    nbits: int = 0,
    memory_jsonl: str | Path | None = None,
    memory_png: str | Path | None = None,
    base_cache: str | Path | None = None,
    precisao: str = "auto",
) -> list[Prediction]:
    """The predict rule: test split → predictions JSONL (adapter, or base when ``adapter_dir`` is None).

    While it runs, a background sampler writes RAM/GPU use to ``memory_jsonl`` and, at the end, the
    seed's chart ``memory_png`` (both optional). ``base_cache`` (afinar.predict.base_cache): with a LoRA
    adapter, the base model's predictions are made first with the same loaded model and kept there
    (unless already kept); without an adapter, a kept file is copied to ``out_path`` instead of predicting.
    """
    from contextlib import nullcontext

    from afinar.predict import base_cache as cache
    from afinar.predict.memory import memory_sampler, plot_prediction_memory

    kept = Path(base_cache) if base_cache is not None else None
    if adapter_dir is None and kept is not None and cache.reuse(kept, out_path):
        return []
    records = read_test_split(test_split, settings.n_exemplos)
    log.info("%d test records from %s (n_exemplos=%d)", len(records), test_split, settings.n_exemplos)
    sampler = memory_sampler(memory_jsonl) if memory_jsonl else nullcontext()
    with sampler:
        if adapter_dir is not None and adapter_kind(adapter_dir) == "lora":
            loaded = load_base(base, nbits, precisao)
            if kept is not None and not kept.is_file():
                both = generate_predictions(
                    loaded.model,
                    loaded.tokenizer,
                    records,
                    settings,
                    desc="predict (base model, for predict_base)",
                )
                write_predictions(kept, both)
                cache.prune(kept)
            loaded = apply_adapter(loaded, base, adapter_dir)
        else:
            loaded = load_for_inference(base, adapter_dir, backend, nbits, settings.max_seq_length, precisao)
        label = "predict (base model)" if loaded.source == "base" else "predict"
        predictions = generate_predictions(loaded.model, loaded.tokenizer, records, settings, desc=label)
    write_predictions(out_path, predictions)
    if memory_jsonl and memory_png:
        plot_prediction_memory(memory_jsonl, memory_png)
    log.info("wrote %d predictions to %s", len(predictions), out_path)
    del loaded
    _free_cuda()
    return predictions


def _free_cuda() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
