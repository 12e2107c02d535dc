"""Code Llama - Instruct's self-instruct data: questions, unit tests and solutions filtered by execution.

Self-instruct as the paper builds it (§2.5 and Appendix H, Figs. 10-12), ~14,000 question-tests-solution triplets:

1. interview-style questions from a large model (Llama 2 70B) with the prompt of Fig. 10, 50 per answer;
   exact duplicates removed;
2. five unit tests per question from Code Llama 7B (Fig. 11, a one-shot prompt);
3. ten solutions per question from Code Llama 7B (Fig. 12; the prompt shows the first test, so the model can infer
   the signature);
4. the tests run against every solution in the sandbox (codellama_hf/evaluation/sandbox.py); the first solution that
   passes is kept, and why the others failed (wrong answer, error, timeout, syntax error, empty) is recorded.

`codellama-hf instruct generate` runs it through codellama_hf.generation's back ends, for questions and for code
separately: an HF causal LM (`--backend hf`, rows refilled as they finish), vLLM in this process (`--backend
vllm`), or an OpenAI-compatible server (`--url`: vLLM, TGI; /v1/completions or /v1/chat/completions). Work is
cached on disk as it finishes (questions.jsonl, items.jsonl), so a restarted run picks up where the last one
stopped; the result is a `datasets` dataset with the chat `messages` the instruct stage trains on, plus
summary.json and summary.png.

Prompts are the paper's figures as text (the paper prompted base Code Llama 7B with raw text); with a chat model
(`chat=True`, `--api chat`) the same turns go through the chat template instead. What the paper leaves open and
we choose: sampling (questions T=0.6/p=0.9, Meta's chat_completion defaults; tests greedy; solutions T=0.8/p=0.95,
the paper's pass@k sampling) and the answer format of a training dialog (the solution between [PYTHON] tags, the
format of Fig. 12).

Modules: `prompts` (the figures' prompts and reading the model's answers), `generators` (the prompts through the
shared generation back ends), `pipeline` (the resumable run, judging, dataset, summary); the command is
codellama_hf.cli.instruct.
"""

from codellama_hf.selfinstruct.generators import Generator, HFGenerator, OpenAIGenerator, Sampling
from codellama_hf.selfinstruct.pipeline import SelfInstructConfig, generate_self_instruct

__all__ = ["Generator", "HFGenerator", "OpenAIGenerator", "Sampling", "SelfInstructConfig", "generate_self_instruct"]
