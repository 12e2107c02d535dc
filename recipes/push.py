"""Publish a Code Llama family to the Hub: one repository per model with its card, and a collection.

Same as `codellama-hf push` (codellama_hf/publish/hub.py documents the steps). A family config, e.g. family.yaml:

    namespace: my-org                    # default: the token's user
    collection: Code Llama (codellama_hf)
    private: false
    license: llama2
    stage_dir: push_staging              # staged repositories and push-plan.json
    models:
      7b: {path: outputs/7b/lcft, results: [eval_results/lcft], base_model: meta-llama/Llama-2-7b-hf}
      7b-python: {path: outputs/7b/python-lcft, results: [eval_results/python-lcft]}
      7b-instruct: outputs/7b/instruct

    python recipes/push.py --config family.yaml --dry-run     # stage, compare, write the plan; upload nothing
    python recipes/push.py --config family.yaml               # HF_TOKEN or `hf auth login` provides the token
    python recipes/push.py --model 7b=outputs/7b/lcft --namespace me --results 7b=eval_results/lcft
"""

import sys

from codellama_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["push", *sys.argv[1:]]))
