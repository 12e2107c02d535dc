"""Greedy HumanEval generation: the HF back end's refilled batches vs static batches (the previous scheduler).

Same model, prompts, batch size, token cap and stop words in one run. The baseline is the scheduler the project
used before: `model.generate` on fixed batches of similar-length prompts, each batch running until its slowest row
stops. Prints problems/s of both, the ratio (target >= 2 on the real model), how many completions are identical
and, with --score, pass@1 of both through the sandbox.

    python bench/generation.py --limit 40 --score            # SmolLM2-135M-Instruct (registry asset), stripped prompts
    python bench/generation.py --model DIR --prompt-form unstripped
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria

from codellama_hf.generation import Backend, Decoding, HFBackend, Raw, load_model, pad_id
from codellama_hf.generation.base import EOS, LENGTH, STOP
from codellama_hf.generation.hf import _left_pad


class _StopOnText(StoppingCriteria):
    def __init__(self, tokenizer, stop: Sequence[str], start: int):
        self.tokenizer, self.stop, self.start = tokenizer, list(stop), start
        self.window = 4 * max(len(s) for s in self.stop) + 4

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :][:, -self.window :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


class StaticBatches(Backend):
    """The previous scheduler: sorted fixed batches through `model.generate`, each waiting on its slowest row."""

    kind = "hf-static"

    def __init__(self, model, tokenizer, batch_size: int):
        super().__init__(tokenizer, name="static")
        self.model, self.batch_size = model, batch_size

    def _generate(self, prompts, decoding: Decoding, *, eos, progress):
        config = GenerationConfig(
            max_new_tokens=decoding.max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id(self.tokenizer),
            eos_token_id=eos,
        )
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[Raw]] = [[] for _ in prompts]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            ids, mask = _left_pad([prompts[i] for i in batch], config.pad_token_id, self.model.device)
            criteria = [_StopOnText(self.tokenizer, decoding.stop, ids.shape[1])] if decoding.stop else None
            with torch.inference_mode():
                generated = self.model.generate(
                    input_ids=ids, attention_mask=mask, generation_config=config, stopping_criteria=criteria
                )
            for row, index in zip(generated[:, ids.shape[1] :].tolist(), batch, strict=True):
                end = next((j for j, t in enumerate(row) if t in eos), None)
                if end is not None:
                    out[index] = [Raw(row[: end + 1], EOS)]
                else:
                    row = [t for t in row if t != config.pad_token_id]  # rows stopped early are pad-filled
                    reason = LENGTH if len(row) >= decoding.max_new_tokens else STOP
                    out[index] = [Raw(row, reason)]
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF folder (default: SmolLM2-135M-Instruct, a registry asset)")
    parser.add_argument("--limit", type=int, default=40, help="first N HumanEval problems (164: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--prompt-form", choices=("strip", "unstripped"), default="strip")
    parser.add_argument("--score", action="store_true", help="also run the tests in the sandbox (pass@1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the measurements to this JSON file")
    parser.add_argument("--plot", default=None, help="write a before/after PNG (wall time, pass@1 with --score)")
    args = parser.parse_args()

    from codellama_hf.assets import smollm2_dir
    from codellama_hf.evaluation.humaneval import HumanEval
    from codellama_hf.evaluation.prompts import apply_form
    from codellama_hf.evaluation.scoring import score

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(str(args.model or smollm2_dir()))
    benchmark = HumanEval()
    problems = [apply_form(p, args.prompt_form) for p in benchmark.problems[: args.limit]]
    decoding = Decoding(args.max_new_tokens, stop=problems[0].stop)
    prompts = [p.prompt for p in problems]
    runs = {}
    for name, backend in (
        ("static", StaticBatches(model, tokenizer, args.batch_size)),
        ("refill", HFBackend(model, tokenizer, batch_size=args.batch_size)),
    ):
        start, cpu = time.perf_counter(), time.process_time()
        completions = [cs[0] for cs in backend.complete(prompts, decoding)]
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        runs[name] = {
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1),
            "problems_per_s": round(len(prompts) / seconds, 4),
            "cut_by_token_cap": sum(c.truncated for c in completions),
            "empty": sum(not c.text.strip() for c in completions),
            "completions": [c.text for c in completions],
        }
        rate = len(prompts) / seconds
        print(f"{name}: {len(prompts)} problems in {seconds:.1f} s, {cpu:.1f} CPU s ({rate:.3f} problems/s)")
    same = sum(a == b for a, b in zip(runs["static"]["completions"], runs["refill"]["completions"], strict=True))
    ratio = runs["refill"]["problems_per_s"] / runs["static"]["problems_per_s"]
    cpu_ratio = runs["static"]["cpu_seconds"] / runs["refill"]["cpu_seconds"]
    print(f"refill / static: {ratio:.2f}x problems/s, {cpu_ratio:.2f}x per CPU second (target >= 2)")
    print(f"identical completions: {same}/{len(prompts)}")
    if args.score:
        for name, run in runs.items():
            samples = [
                {"task_id": p.task_id, "completion": c} for p, c in zip(problems, run["completions"], strict=True)
            ]
            scored = score(benchmark, samples, allow_code_execution=True, ks=(1,), progress=False)
            run["pass@1"] = scored.metrics["pass@1"]
            run["passed"] = sorted(s["task_id"] for s in scored.samples if s["passed"])
            print(f"{name}: pass@1 {scored.metrics['pass@1']:.4f} ({len(run['passed'])}/{len(problems)})")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        with open(args.json, "w") as handle:
            json.dump(
                {"settings": settings, "ratio": ratio, "cpu_ratio": cpu_ratio, "identical": same, "runs": runs},
                handle,
                indent=1,
            )
    if args.plot:
        plot(runs, args, args.plot)


def plot(runs: dict, args, path: str) -> None:
    """Wall time of both schedulers, annotated with problems/s and (when scored) pass@1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bars = ax.bar(["static batches\n(before)", "refilled batches\n(after)"], [runs[n]["seconds"] for n in names])
    for bar, name in zip(bars, names, strict=True):
        run = runs[name]
        label = f"{run['problems_per_s']:.3f} problems/s"
        if "pass@1" in run:
            label += f"\npass@1 {run['pass@1']:.3f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("wall time (s)")
    ax.set_ylim(0, 1.25 * max(runs[n]["seconds"] for n in names))
    ax.set_title(
        f"Greedy HumanEval, first {args.limit} problems, batch {args.batch_size}, cap {args.max_new_tokens}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
