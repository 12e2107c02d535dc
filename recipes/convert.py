"""Convert checkpoints between Meta's format and Hugging Face's, then check the result with plain transformers.

Start of the pipeline (paper §2: every Code Llama model starts from Llama 2): Llama 2 as Meta distributes it
(consolidated.NN.pth + params.json + tokenizer.model) becomes the HF folder that the code stage trains; for 7B/13B,
`extend_vocab` adds Code Llama's 16 infilling pieces (embeddings and output grow 32000 -> 32016, new rows = mean of
the old). End of the pipeline: a trained HF model goes back to Meta's format, for Meta's own code and Meta-format
tools.

    python recipes/convert.py --input llama-2-7b --output outputs/7b/llama2 --extend_vocab true
    python recipes/convert.py --direction hf-to-meta --input outputs/13b/instruct --output outputs/13b/meta \\
        --shards 2
    python recipes/convert.py --config my-conversion.yaml --overwrite true

The same settings as `codellama-hf convert` (codellama_hf/convert/config.py); flags take either spelling
(`--extend_vocab true` or `--extend-vocab`).
"""

from __future__ import annotations

import logging
import sys

from trl import TrlParser

from codellama_hf.convert.config import ConvertConfig, convert_and_check


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        # Config: YAML (--config) and/or command-line flags, the same ConvertConfig as `codellama-hf convert`.
        (config,) = TrlParser([ConvertConfig]).parse_args_and_config()
        convert_and_check(config)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"convert: error: {err}", file=sys.stderr)  # bad input ends in one line, as in the CLI
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
