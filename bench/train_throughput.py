"""Training throughput: useful tokens/s of packed rows against padded batches, and the GPU speed matrix.

CPU (default): the tiny model (vocabulary 32,000: Llama 2's tokenizer, so documents have their real token lengths)
trains (forward, backward, AdamW step) on the same random Python standard-library files twice, in the same run:
  (a) padded:  batches of --batch documents in random order, padded to the longest one (an attention mask and
               labels -100 on padding), as `DataCollatorWithPadding` does;
  (b) packed:  best-fit rows of --seq-len tokens with per-document position_ids (the stages' PackedCollator),
               grouped into as many optimizer steps as (a) takes.
Useful tokens are the documents' own tokens (never padding), identical in (a) and (b); files longer than the context
are cut into context-sized pieces for both. Prints tokens/s of each, the ratio b/a (target >= 1.8) and the ratio of
tokens computed (padding included), which the time ratio follows: the stdlib's long files fill whole rows on their
own and gain nothing from packing (the s^2 attention of CPU sdpa with a mask moves the time ratio a little off it).
Measured here (2 shared cores, under load): --documents 12 gave 2.09x, tokens computed 1.84x.

GPU (--gpu): a 7B-shaped slice (--layers full-width Llama-2-7B layers, vocabulary 32,016, bf16) on packed rows at
4,096 and 16,384 tokens, for each attention backend installed, Liger on/off and torch.compile on/off: tokens/s/GPU,
MFU (6N + 12 L h s FLOPs per token over the GPU's bf16 peak; PaLM, Chowdhery et al. 2022, App. B) and peak memory
against the planner's estimate for the same slice (the slice trains pure bf16 with bf16 AdamW states, 8 bytes per
parameter, where the planner counts mixed precision's 16: the gap is 8 bytes x the slice's parameters). This path
needs CUDA; it has not been run on the CPU-only machine it was written on.

    python bench/train_throughput.py [--documents 12] [--seq-len 4096] [--batch 4]
    python bench/train_throughput.py --gpu [--layers 4] [--steps 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # bench/timing.py when run as a script

BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def stdlib_samples(tokenizer, count: int, seq_len: int, seed: int = 0) -> list[list[int]]:
    """Token ids of `count` random standard-library files, cut into seq_len pieces as the packer does."""
    from codellama_hf.data.packing import chunk

    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("**/*.py"))
    random.Random(seed).shuffle(paths)
    texts = [t for t in (p.read_text(encoding="utf-8", errors="replace") for p in paths) if t.strip()][:count]
    ids = [[tokenizer.bos_token_id, *e.ids, tokenizer.eos_token_id] for e in tokenizer._tokenizer.encode_batch(texts)]
    return [list(piece) for piece in chunk(ids, seq_len)]


def packed_batches(samples, seq_len: int, pad_id: int, steps: int | None = None) -> list[dict]:
    """Packed rows, collated one per batch, or spread over `steps` batches (as many optimizer steps as padding)."""
    from codellama_hf.data.packing import PackedCollator, pack

    rows, lengths = pack(samples, seq_len, pad_id)
    items = [{"input_ids": r, "seq_lengths": n} for r, n in zip(rows, lengths, strict=True)]
    per_batch = 1 if steps is None else max(1, round(len(items) / steps))
    collate = PackedCollator()
    return [collate(items[i : i + per_batch]) for i in range(0, len(items), per_batch)]


def padded_batches(samples, batch: int, pad_id: int, seed: int = 0) -> list[dict]:
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    out = []
    for start in range(0, len(order), batch):
        group = [samples[i] for i in order[start : start + batch]]
        width = max(map(len, group))
        ids = torch.full((len(group), width), pad_id)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, sample in enumerate(group):
            ids[row, : len(sample)] = torch.tensor(sample)
            mask[row, : len(sample)] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def train_pass(model, optimizer, batches, device) -> float:
    """Seconds for one optimizer step per batch over all batches."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def cpu_bench(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.assets import llama2_tokenizer_dir
    from codellama_hf.models import llama_config

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(llama2_tokenizer_dir())
    samples = stdlib_samples(tokenizer, args.documents, args.seq_len)
    useful = sum(map(len, samples))
    config = llama_config("tiny", vocab_size=len(tokenizer), max_position_embeddings=args.seq_len)
    config.use_cache = False  # packed rows: no cache, or documents see each other (docs/stack-notes.md)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    # as the recipes train; it also keeps one layer's s x s attention matrices alive at a time (CPU sdpa with a mask)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cpu = torch.device("cpu")
    padded = padded_batches(samples, args.batch, tokenizer.eos_token_id)
    packed = packed_batches(samples, args.seq_len, tokenizer.eos_token_id, steps=len(padded))
    train_pass(model, optimizer, packed[:1], cpu)  # warm-up: allocator, kernels
    train_pass(model, optimizer, padded[-1:], cpu)
    seconds = {
        "padded": train_pass(model, optimizer, padded, cpu),
        "packed": train_pass(model, optimizer, packed, cpu),
    }
    computed = {
        "padded": sum(b["input_ids"].numel() for b in padded),
        "packed": sum(b["input_ids"].numel() for b in packed),
    }
    result = {
        "documents": args.documents,
        "pieces": len(samples),
        "useful_tokens": useful,
        "seq_len": args.seq_len,
        **{f"{k}_tokens_computed": v for k, v in computed.items()},
        **{f"{k}_seconds": round(v, 2) for k, v in seconds.items()},
        **{f"{k}_useful_tokens_per_s": round(useful / v, 1) for k, v in seconds.items()},
        "ratio_packed_over_padded": round(seconds["padded"] / seconds["packed"], 3),
        "tokens_computed_ratio": round(computed["padded"] / computed["packed"], 3),
    }
    print(
        f"useful tokens/s at {args.seq_len:,} context, {len(samples)} pieces of {args.documents} stdlib files "
        f"({useful:,} tokens): padded (batches of {args.batch}) {result['padded_useful_tokens_per_s']:,.0f}, "
        f"packed {result['packed_useful_tokens_per_s']:,.0f} -> {result['ratio_packed_over_padded']:.2f}x "
        f"(target >= 1.8x; tokens computed padded / packed = {result['tokens_computed_ratio']:.2f})"
    )
    return result


def gpu_peak_tflops(override: float | None) -> float:
    if override:
        return override
    name = torch.cuda.get_device_name(0)
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (its dense bf16 peak)")


def attention_backends() -> list[str]:
    found = ["sdpa", "flex_attention"]
    if importlib.util.find_spec("flash_attn") is not None:
        found.insert(0, "flash_attention_2")
    return found


def gpu_case(args, seq_len: int, attention: str, liger: bool, compile_: bool, samples, peak: float) -> dict:
    from transformers import AutoModelForCausalLM

    from codellama_hf.models import llama_config
    from codellama_hf.planner import ModelShape, Setup, attention_kind, memory

    device = torch.device("cuda")
    config = llama_config("7b", vocab_size=32016, num_hidden_layers=args.layers, max_position_embeddings=seq_len)
    config.use_cache = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.bfloat16).to(device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if liger:
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(model, {})
    runner = torch.compile(model) if compile_ else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    batches = packed_batches(samples, seq_len, 2)[: args.steps + 2]
    train_pass(runner, optimizer, batches[:2], device)  # warm-up (and compilation)
    torch.cuda.reset_peak_memory_stats()
    seconds = train_pass(runner, optimizer, batches[2:], device)
    tokens = sum(b["input_ids"].numel() for b in batches[2:])
    shape = ModelShape.from_config(config)
    flops_per_token = 6 * (shape.parameters - shape.vocab * shape.hidden) + 12 * shape.layers * shape.hidden * seq_len
    tokens_per_s = tokens / seconds
    setup = Setup(
        gpus=1,
        gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
        seq_len=seq_len,
        tokens_per_step=seq_len,
        zero_stage=0,
        fused_loss=liger,
        attention=attention_kind(attention),
    )
    estimate = memory(shape, setup, 1)
    return {
        "seq_len": seq_len,
        "attention": attention,
        "liger": liger,
        "compile": compile_,
        "tokens_per_s_per_gpu": round(tokens_per_s, 1),
        "mfu": round(flops_per_token * tokens_per_s / (peak * 1e12), 4),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "planner_gib": round(estimate.total / 2**30, 2),
    }


def gpu_bench(args) -> list[dict]:
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU (this machine has none); run the CPU comparison without --gpu")
    from transformers import AutoTokenizer

    from codellama_hf.assets import llama2_tokenizer_dir

    peak = gpu_peak_tflops(args.peak_tflops)
    tokenizer = AutoTokenizer.from_pretrained(llama2_tokenizer_dir())
    results = []
    liger_options = [False, True] if importlib.util.find_spec("liger_kernel") else [False]
    for seq_len in (4096, 16384):
        samples = stdlib_samples(tokenizer, args.documents * 8, seq_len)
        for attention in attention_backends():
            for liger in liger_options:
                for compile_ in (False, True):
                    try:
                        row = gpu_case(args, seq_len, attention, liger, compile_, samples, peak)
                    except Exception as err:  # one failing combination must not hide the others
                        row = {"seq_len": seq_len, "attention": attention, "liger": liger, "compile": compile_}
                        row["error"] = f"{type(err).__name__}: {err}"[:300]
                    print(json.dumps(row), flush=True)
                    results.append(row)
                    torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=12, help="random stdlib files (CPU); x8 on GPU")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4, help="documents per padded batch (CPU baseline)")
    parser.add_argument("--gpu", action="store_true", help="the GPU matrix instead of the CPU comparison")
    parser.add_argument("--layers", type=int, default=4, help="full-width 7B layers in the GPU slice")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per GPU case")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of the GPU, for MFU")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    result = gpu_bench(args) if args.gpu else cpu_bench(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
