"""Code Llama in miniature: the whole recipe end to end on a CPU, and a report that tests the paper's claims.

`codellama-hf reproduce --preset tiny --out DIR [--seed N]` (or `python -m experiments.miniature ...` from the
repository root) runs, each step skipped when its output is complete
(so an interrupted run continues where it stopped, and a training stage resumes from its latest checkpoint):

 1. tokenizer     a tiny "Llama 2" tokenizer (4,000 pieces, no infilling pieces);
 2. pretrain      a tiny Llama pretrained briefly on local natural language (the stand-in for Llama 2);
 3. meta          that model saved in Meta's consolidated format (convert.hf_to_meta);
 4. init          converted back to HF with the Code Llama tokenizer and the vocabulary extension (4,000 -> 4,016
                  rows at the mean embedding: convert.meta_to_hf(extend_vocab=True));
 5. data          the code corpus' training files cut into blocks that fit the tiny context (so FIM applies);
 6. code          code stage with FIM (rate 0.9), and code-nofim: the same budget from the same start without FIM;
 7. python        the paper's Python branch: code-python-branch (the code stage without FIM from the pretrained
                  model, 4,000 rows, no infilling pieces), then the Python stage continuing it;
 8. lcft          long-context fine-tuning of the code model: theta 1e6, sequences 4x the code stage's;
 9. selfinstruct  self-instruct with execution filtering (selfinstruct.generate_self_instruct), toy generator;
10. instruct      instruct stage (SFT on those dialogs + rehearsal, FIM on the code rehearsal) continuing the
                  LCFT model;
11. evaluate      the claims' measurements on the corpus' held-out validation files (one cached JSON each),
                  infilling among them before (LCFT) and after (instruct) the instruct stage;
12. hub           model cards and the family staged for the Hub (publish.hub.push_family, dry run);
13. report        DIR/report/report.md with PNGs and DIR/report/claims.json (only measured numbers).

Every training stage is the library's `run_stage` in its own subprocess (accelerate's state is a
process-wide singleton); "pretrain" is the miniature's stand-in for Llama 2's own pretraining.
The toy self-instruct generator is honest about what it is: a small fixed bank of interview problems
with unit tests and candidate solutions (some wrong), answering the paper's prompts (no tiny model can write
passing code); the tests, the sandbox and "keep the first passing solution" are the real pipeline.

This folder is an experiment, not library code: `presets.py` (run lengths), `run.py` (the run folder and its
steps), `pipeline.py` (the steps in order), `stage.py` (one training stage per process), `measure.py`,
`report.py` with `report.md.j2` (the report's text), and `toy_problems.json` (the toy generator's bank).
"""
