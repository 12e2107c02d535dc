"""`codellama-hf plan`: per-GPU memory of a training stage and the micro-batch that reaches the paper's batch.

The estimate adds up what a step keeps on one GPU, for mixed-precision AdamW under DeepSpeed ZeRO (Rajbhandari et
al. 2020, arXiv 1910.02054): 2 bytes of bf16 weights, 4 of gradients (deepspeed_configs/ accumulate them in fp32,
data_types.grad_accum_dtype; 2 under DDP) and 12 of fp32 master weights and Adam moments per parameter, divided
over the GPUs according to the ZeRO stage (or moved to CPU by offload). Activations follow
Korthikanti et al. 2022 (arXiv 2205.05198) adapted to Llama's SwiGLU block and FlashAttention (no s^2 term):

    per token and layer, saved for backward (bf16)
      2 x RMSNorm (fp32 input + bf16 output)     12 h bytes
      q, k, v after RoPE + attention output       2 (2 h + 2 h_kv) bytes
      SwiGLU: gate, up, silu(gate), gate*up       8 f bytes
    full checkpointing keeps only each layer's input (2 h bytes) and recomputes one layer at a time in backward.

The logits of the 32k vocabulary are the other big term at 16k tokens: bf16 logits, their fp32 copy and the fp32
gradient (10 bytes per token and vocabulary entry, ~4.9 GiB per 16k row), or, with a fused linear cross-entropy
(Liger), one chunk of them. Sequence parallelism divides every per-token term by its size. The micro-batch is the
largest that fits; gradient accumulation then makes up the stage's tokens per step (training/batch_plan.py).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass, replace

GiB = 1024**3
ATTENTION = ("flash", "sdpa", "flex", "eager")
OFFLOAD = ("none", "optimizer", "all")
CONTEXT_RESERVE_GiB = 1.0  # CUDA context, cuBLAS workspaces and the NCCL buffers outside torch's allocator
FRAGMENTATION = 0.95  # share of the rest that the caching allocator can really hand out


@dataclass(frozen=True)
class ModelShape:
    """The sizes the arithmetic needs: a Llama architecture without biases, untied embeddings."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def from_size(cls, size: str) -> ModelShape:
        from codellama_hf.models import SIZES

        if size not in SIZES:
            raise ValueError(f"size={size!r}: choose one of {sorted(SIZES)}")
        s = SIZES[size]
        # 34B has no infilling pieces: 32,000 tokens; the others 32,016 (Meta's codellama README)
        vocab = {"34b": 32000, "tiny": 32016}.get(size, 32016)
        return cls(
            s["hidden_size"],
            s["intermediate_size"],
            s["num_hidden_layers"],
            s["num_attention_heads"],
            s["num_key_value_heads"],
            vocab,
        )

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a transformers LlamaConfig (or anything with the same attribute names)."""
        return cls(
            config.hidden_size,
            config.intermediate_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            config.vocab_size,
        )

    @property
    def kv_hidden(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    @property
    def layer_parameters(self) -> int:
        h = self.hidden
        return 2 * h * h + 2 * h * self.kv_hidden + 3 * h * self.intermediate + 2 * h

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_parameters + 2 * self.vocab * self.hidden + self.hidden

    def layer_activation_bytes(self, tokens: int, element: int) -> float:
        """Tensors one decoder layer saves for backward, FlashAttention-style (no s^2 attention matrix)."""
        h, kv, f = self.hidden, self.kv_hidden, self.intermediate
        norms = 2 * (4 * h + element * h)  # each RMSNorm: its fp32 input and the normalised output
        attention = element * (2 * h + 2 * kv)
        mlp = 4 * element * f
        return tokens * (norms + attention + mlp)


@dataclass(frozen=True)
class Setup:
    """One way to run a stage: what `codellama-hf plan` is asked about."""

    gpus: int
    gpu_memory_gib: float
    seq_len: int
    tokens_per_step: int
    zero_stage: int = 3
    offload: str = "none"
    sequence_parallel: int = 1
    checkpointing: bool = True
    fused_loss: bool = False
    attention: str = "flash"
    bf16: bool = True
    micro_batch: int | None = None  # None: the largest that fits

    def check(self, shape: ModelShape) -> None:
        from codellama_hf.parallel import check_sequence_parallel

        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage}: 0 (DDP), 1, 2 or 3")
        if self.offload not in OFFLOAD:
            raise ValueError(f"offload={self.offload!r}: one of {OFFLOAD}")
        if self.offload == "all" and self.zero_stage != 3:
            raise ValueError("offload=all (parameters too) needs zero_stage=3")
        if self.offload == "optimizer" and self.zero_stage == 0:
            raise ValueError("offload=optimizer needs ZeRO (zero_stage 1-3)")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention={self.attention!r}: one of {ATTENTION}")
        if self.gpus < 1 or self.gpu_memory_gib <= 0:
            raise ValueError(f"gpus={self.gpus}, gpu_memory={self.gpu_memory_gib}: must be positive")
        check_sequence_parallel(
            self.sequence_parallel,
            world_size=self.gpus,
            num_heads=shape.heads,
            num_kv_heads=shape.kv_heads,
            seq_len=self.seq_len,
        )

    @property
    def data_parallel(self) -> int:
        return self.gpus // self.sequence_parallel


@dataclass(frozen=True)
class Memory:
    """Peak bytes on one GPU, by what holds them."""

    parameters: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    buffers: float
    step: float  # the optimizer step's transient fp32 gradient buffer (after activations are freed)

    @property
    def training_peak(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.logits + self.buffers

    @property
    def total(self) -> float:
        return max(self.training_peak, self.parameters + self.gradients + self.optimizer + self.step)

    def gib(self) -> dict:
        parts = {k: round(v / GiB, 2) for k, v in asdict(self).items()}
        return {**parts, "total": round(self.total / GiB, 2)}


def memory(shape: ModelShape, setup: Setup, micro_batch: int) -> Memory:
    """Per-GPU peak for `micro_batch` rows of seq_len tokens per process (each process holds seq_len / sp of them)."""
    n, p = setup.gpus, shape.parameters
    weight = 2 if setup.bf16 else 4
    element = 2 if setup.bf16 else 4
    optimizer_bytes = 12 if setup.bf16 else 8  # fp32 master + m + v; pure fp32 keeps no master copy
    stage = setup.zero_stage
    parameters = weight * p / (n if stage == 3 else 1)
    accumulate = 4 if stage >= 1 else weight  # ZeRO's gradient partitions in grad_accum_dtype (fp32 in our configs)
    gradients = accumulate * p / (n if stage >= 2 else 1)
    optimizer = optimizer_bytes * p / (n if stage >= 1 else 1)
    if setup.offload in ("optimizer", "all"):
        optimizer = 0.0
    if setup.offload == "all":
        parameters = 0.0

    tokens = micro_batch * setup.seq_len // setup.sequence_parallel  # tokens this process holds
    h, v = shape.hidden, shape.vocab
    layer = shape.layer_activation_bytes(tokens, element)
    if setup.checkpointing:
        activations = shape.layers * element * h * tokens + layer
    else:
        activations = shape.layers * layer
    if setup.attention == "eager":  # softmax probabilities and scores: (heads / sp) x s x s per row and layer
        square = micro_batch * shape.heads // setup.sequence_parallel * setup.seq_len**2 * 2 * element
        activations += square * (1 if setup.checkpointing else shape.layers)
    activations += tokens * h * (4 + element)  # final norm

    if setup.fused_loss:
        # Liger's fused linear cross-entropy: chunks of ~ tokens x h / vocab rows, the hidden-state gradient and
        # an fp32 gradient of lm_head computed during the forward pass
        chunk = min(tokens, 2 ** math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(v / h))))))
        logits = chunk * v * (element + 4) + tokens * h * element + v * h * 4
    else:
        # log-softmax backward holds its saved fp32 output, the incoming fp32 gradient and the one it makes
        logits = tokens * v * 12

    buffers = 0.0
    if stage == 3:  # gathered layer + the prefetched next one, gathered embeddings / lm_head, reduce bucket
        buffers += 2 * weight * shape.layer_parameters + weight * v * h + 4 * h * h
    elif stage in (1, 2):
        buffers += 2 * 4 * h * h  # reduce buckets ("auto" = h^2 elements), double-buffered
    elif n > 1:
        buffers += 2 * 25 * 1024**2 * 4 / weight  # DDP gradient buckets
    if setup.attention == "sdpa":  # transformers builds a boolean block-diagonal mask from position_ids
        buffers += micro_batch * setup.seq_len**2
    if setup.sequence_parallel > 1:  # all-to-all send/receive copies of q, k, v and the attention output
        buffers += 2 * tokens * element * (2 * h + 2 * shape.kv_hidden)

    partition = p / (n if stage >= 1 else 1)
    step = 0.0 if setup.offload != "none" else 4 * min(partition, 1e9) * (stage == 3)  # sub_group_size 1e9
    return Memory(parameters, gradients, optimizer, activations, logits, buffers, step)


def usable_bytes(gpu_memory_gib: float) -> float:
    return (gpu_memory_gib - CONTEXT_RESERVE_GiB) * FRAGMENTATION * GiB


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    setup: Setup
    fits: bool
    micro_batch: int
    grad_accum: int
    memory: Memory
    change: str | None = None  # the smallest change that fits, when this setup does not
    changed: Setup | None = None

    def to_dict(self) -> dict:
        return {
            "parameters": self.shape.parameters,
            "setup": asdict(self.setup),
            "fits": self.fits,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "memory_gib": self.memory.gib(),
            "usable_gib": round(usable_bytes(self.setup.gpu_memory_gib) / GiB, 2),
            "change": self.change,
        }

    def describe(self) -> str:
        s = self.setup
        m = self.memory.gib()
        lines = [
            f"{self.shape.parameters / 1e9:.2f}B parameters, {s.gpus} GPUs x {s.gpu_memory_gib:g} GiB, "
            f"ZeRO-{s.zero_stage} (offload {s.offload}), sequence parallel {s.sequence_parallel}, "
            f"checkpointing {'full' if s.checkpointing else 'none'}, {s.attention} attention, "
            f"{'fused' if s.fused_loss else 'plain'} cross-entropy",
            f"per GPU at micro-batch {self.micro_batch} x {s.seq_len:,} tokens: "
            + ", ".join(f"{k} {m[k]:.2f}" for k in ("parameters", "gradients", "optimizer"))
            + ", "
            + ", ".join(f"{k} {m[k]:.2f}" for k in ("activations", "logits", "buffers"))
            + f" -> {m['total']:.2f} GiB of {usable_bytes(s.gpu_memory_gib) / GiB:.1f} usable",
        ]
        if self.fits:
            lines.append(
                f"fits: {s.tokens_per_step:,} tokens per step = {s.data_parallel} data-parallel replicas x "
                f"{self.micro_batch} row(s) x {self.grad_accum} accumulation steps x {s.seq_len:,} tokens"
            )
        else:
            lines.append("does not fit" + (f"; smallest change that fits: {self.change}" if self.change else ""))
        return "\n".join(lines)


def _micro_batches(setup: Setup) -> list[int]:
    """Micro-batches that split the stage's rows per step evenly over the data-parallel replicas."""
    from codellama_hf.training.batch_plan import batch_plan

    if setup.tokens_per_step % setup.seq_len:
        raise ValueError(f"tokens_per_step={setup.tokens_per_step:,} is not a whole number of {setup.seq_len:,} rows")
    rows = setup.tokens_per_step // setup.seq_len
    if rows % setup.data_parallel:
        batch_plan(  # raises the batch plan's own message naming the setting
            tokens_per_step=setup.tokens_per_step,
            seq_len=setup.seq_len,
            micro_batch=1,
            world_size=setup.gpus,
            sequence_parallel=setup.sequence_parallel,
            max_steps=1,
        )
    per_replica = rows // setup.data_parallel
    return [m for m in range(1, per_replica + 1) if per_replica % m == 0]


def _evaluate(shape: ModelShape, setup: Setup) -> tuple[bool, int, int, Memory]:
    budget = usable_bytes(setup.gpu_memory_gib)
    options = _micro_batches(setup)
    if setup.micro_batch is not None:
        if setup.micro_batch not in options:
            raise ValueError(
                f"micro_batch={setup.micro_batch} does not divide the {options[-1]} rows per data-parallel replica "
                f"and step; use one of {options}"
            )
        options = [setup.micro_batch]
    best = None
    for m in options:
        if memory(shape, setup, m).total <= budget:
            best = m
    chosen = best or options[0]
    rows = setup.tokens_per_step // setup.seq_len
    return best is not None, chosen, rows // (setup.data_parallel * chosen), memory(shape, setup, chosen)


def _changes(shape: ModelShape, setup: Setup):
    """Single changes, cheapest first: free switches, then more sharding, then offload, then more GPUs."""
    if setup.attention == "eager":
        yield "attention: flash", replace(setup, attention="flash")
    if not setup.fused_loss:
        yield "fused loss (use_liger_kernel: true)", replace(setup, fused_loss=True)
    if not setup.checkpointing:
        yield "activation_checkpointing: true", replace(setup, checkpointing=True)
    for stage in range(setup.zero_stage + 1, 4):
        yield f"ZeRO stage {stage}", replace(setup, zero_stage=stage)
    sp = setup.sequence_parallel * 2
    while sp <= setup.gpus:
        if setup.gpus % sp == 0 and shape.heads % sp == 0 and setup.seq_len % sp == 0:
            if shape.kv_heads % sp == 0 or sp % shape.kv_heads == 0:
                yield f"sequence_parallel_size: {sp}", replace(setup, sequence_parallel=sp)
        sp *= 2
    if setup.offload == "none" and setup.zero_stage >= 1:
        yield (
            "offload the optimizer to CPU (accelerate_configs/zero3_offload.yaml)",
            replace(setup, offload="optimizer"),
        )
    if setup.offload != "all" and setup.zero_stage == 3:
        yield "offload parameters and optimizer to CPU", replace(setup, offload="all")
    gpus = setup.gpus * 2
    while gpus <= 1024:
        yield f"{gpus} GPUs", replace(setup, gpus=gpus)
        gpus *= 2


def plan(shape: ModelShape, setup: Setup) -> Plan:
    """The micro-batch / accumulation for this setup, or the smallest change that fits (or None if none does)."""
    setup.check(shape)
    fits, micro, accum, mem = _evaluate(shape, setup)
    if fits:
        return Plan(shape, setup, True, micro, accum, mem)
    relaxed = replace(setup, micro_batch=None)
    for name, changed in _changes(shape, relaxed):
        try:
            ok, *_ = _evaluate(shape, changed)
        except ValueError:  # e.g. more GPUs than rows per step
            continue
        if ok:
            return Plan(shape, setup, False, micro, accum, mem, name, changed)
    # no single change: apply the free switches and more sharding together, then look again
    combined = replace(relaxed, attention="flash", fused_loss=True, checkpointing=True, zero_stage=3)
    for name, changed in [("flash attention, fused loss, full checkpointing and ZeRO-3", combined)] + [
        (f"flash attention, fused loss, full checkpointing, ZeRO-3 and {n}", c) for n, c in _changes(shape, combined)
    ]:
        try:
            ok, *_ = _evaluate(shape, changed)
        except ValueError:
            continue
        if ok:
            return Plan(shape, setup, False, micro, accum, mem, name, changed)
    return Plan(shape, setup, False, micro, accum, mem)


class LiveTensorBytes:
    """Peak bytes of live CPU tensor storage while it is active: checks `memory` against a real step on CPU.

    A dispatch mode sees every tensor an operator returns; a storage counts from then until it is freed. Tensors
    made before (parameters) are passed in. Python-level bookkeeping makes it slow: use it on tiny models.
    """

    def __init__(self, existing=()):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for value in tree_flatten(out)[0]:
                    tracker._track(value)
                return out

        self._mode = _Mode()
        for tensor in existing:
            self._track(tensor)

    def _track(self, tensor) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.sizes:
            return
        self.sizes[key] = storage.nbytes()
        self.current += self.sizes[key]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.sizes.pop(key, 0)

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


# ---------------------------------------------------------------------------------------------------------------
# Command line and recipes
# ---------------------------------------------------------------------------------------------------------------


def stage_defaults(size: str, stage: str) -> dict:
    """seq_len, tokens_per_step and switches of recipes/configs/<size>/<stage>.yaml."""
    from codellama_hf.training.config import config_path, read_config_file

    path = config_path(stage, size)
    config = read_config_file(path)
    missing = [k for k in ("seq_len", "tokens_per_step") if k not in config]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}; pass --seq-len / --tokens-per-step")
    return config


def attention_kind(attn_implementation: str | None, on_gpu: bool = True) -> str:
    """The planner's attention family of a transformers attn_implementation name."""
    name = (attn_implementation or "sdpa").lower()
    if "flash" in name or "kernels" in name:
        return "flash"
    if "flex" in name:
        return "flex"
    if name == "eager":
        return "eager"
    return "sdpa"
